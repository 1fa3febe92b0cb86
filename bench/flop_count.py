"""Model FLOPs per trained token, and the machine's measured matmul peak: "how far from the limit".

Counted the same way for every trainer compared (an implementation that skips work, such as the
LM head on prompt tokens, gets no credit for it; what counts is the model's work per token):

    N       = parameters of the base without the input embedding table (a lookup, no matmul);
              the LM head counts, tied or not
    N_lora  = adapter parameters
    FLOPs/token = k * N + 6 * N_lora + 12 * L * d * s
        k = 6 for full fine-tuning (forward 2N, activation grads 2N, weight grads 2N),
        k = 4 for a frozen base (forward 2N + activation grads 2N)
        12 * L * d * s: attention scores and weighted values, forward and backward, for a context
        of s tokens (PaLM convention, causal masking not halved)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence


def base_parameters(shape: Mapping[str, int]) -> int:
    """Matmul parameters of a Llama-shaped base (q, k, v, o, gate, up, down, norms, final norm, LM head)."""
    d, inter, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * inter + 2 * d
    return shape["num_hidden_layers"] * per_layer + d + vocab * d


def shape_of(config) -> dict[str, int]:
    """The shape fields of a transformers Llama-family config."""
    return {k: int(getattr(config, k)) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                 "num_key_value_heads", "intermediate_size", "vocab_size")}


def lora_parameters(shape: Mapping[str, int], rank: int) -> int:
    """LoRA on every linear layer of every block (q, k, v, o, gate, up, down): r * (in + out) each."""
    d, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = rank * ((d + d) * 2 + (d + kv) * 2 + (d + inter) * 2 + (inter + d))
    return shape["num_hidden_layers"] * per_layer


def flops_per_token(*, base_params: int, lora_params: int, layers: int, hidden: int, context: float,
                    frozen_base: bool) -> float:
    k = 4 if frozen_base else 6
    return k * base_params + 6 * lora_params + 12 * layers * hidden * context


def mean_context(lengths: Sequence[int]) -> float:
    """The context a token attends over, on average, when samples do not attend to each other."""
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0


def matmul_peak_flops(threads: int, size: int = 1024, repeats: int = 8) -> float:
    """Best fp32 FLOP/s of a square torch matmul with `threads` threads (the machine's practical peak)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.matmul(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t0)
        return 2 * size ** 3 / best
    finally:
        torch.set_num_threads(previous)
