"""Serving: vLLM arguments, the OpenAI-compatible gateway, the local CPU engine."""
