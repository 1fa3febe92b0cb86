"""Small pure helpers over OpenAI request/response JSON shared by the gateway and the engine."""

from __future__ import annotations

from .errors import ApiError


def content_text(content) -> str:
    """A message's text: a string, or the text parts of a multi-part content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return str(content)


def flatten_messages(messages: list[dict]) -> str:
    """Chat as `role: content` lines joined by newlines (the payload log contract)."""
    return "\n".join(f"{m.get('role', '')}: {content_text(m.get('content'))}" for m in messages)


def flatten_prompt(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return str(prompt)


def validate_request(kind: str, body: object, *, max_tokens_limit: int | None) -> str:
    """Check the fields the gateway relies on; returns the requested model name."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required and must be a string", param="model")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "`messages` is required: a non-empty list of {role, content}", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, f"messages[{i}] must be an object with a string `role`", param=f"messages[{i}]")
    else:
        prompt = body.get("prompt")
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt))):
            raise ApiError(400, "`prompt` is required: a string or a list of strings", param="prompt")
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"`{field}` must be a positive integer, got {value!r}", param=field)
        if max_tokens_limit is not None and value > max_tokens_limit:
            raise ApiError(400, f"`{field}` is {value}, over this deployment's limit of {max_tokens_limit}",
                           param=field, code="max_tokens_exceeded")
    if body.get("stream") not in (None, True, False):
        raise ApiError(400, "`stream` must be a boolean", param="stream")
    return model


def response_text(kind: str, body: dict) -> str:
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    if kind == "chat":
        return content_text((choices[0].get("message") or {}).get("content"))
    return choices[0].get("text") or ""


def chunk_text(kind: str, chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    if kind == "chat":
        return content_text((choices[0].get("delta") or {}).get("content"))
    return choices[0].get("text") or ""
