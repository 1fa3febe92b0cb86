"""Model initialisation: a local Hugging Face folder, the right dtype, SDPA, quantized loading for QLoRA.

Never reaches a hub: every `from_pretrained` gets `local_files_only=True`, and a missing
folder is a TrainerConfigError naming the path and the URI it came from.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.uris import local_path
from kubetune.common import object_store

from .errors import TrainerConfigError

log = logging.getLogger(__name__)

QLORA_NEEDS_GPU = "qlora needs a CUDA GPU; use method lora on CPU"


def remote_cache_root() -> Path:
    """Where s3:// models and checkpoints are copied in this pod (KUBETUNE_REMOTE_CACHE; /tmp by default)."""
    return Path(os.environ.get("KUBETUNE_REMOTE_CACHE") or Path(tempfile.gettempdir()) / "kubetune-remote")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


def _fetch_model(uri: str, *, weights: bool = True) -> Path:
    """This pod's copy of an s3:// model: whole, or without its weights (the driver only needs
    config.json and the tokenizer, and runs on a small head pod)."""
    try:
        if weights:
            return object_store.cached_copy(uri, remote_cache_root() / "models")
        return object_store.cached_copy(uri, remote_cache_root() / "model-configs", skip_suffixes=WEIGHT_SUFFIXES)
    except object_store.ObjectStoreError as exc:
        raise TrainerConfigError(f"spec.baseModel.uri {uri!r}: {exc}") from exc


def local_file(uri: str, field: str) -> Path:
    """Where a data file (prompts, a probe set) is on this pod; s3:// files are copied here first."""
    if not object_store.is_remote(uri):
        return Path(local_path(uri))
    try:
        return object_store.cached_copy(uri, remote_cache_root() / "files") / Path(uri.rstrip("/")).name
    except object_store.ObjectStoreError as exc:
        raise TrainerConfigError(f"{field} {uri!r}: {exc}") from exc


def worker_model_dir(model_dir: str, source: str | None) -> Path:
    """The model folder where weights are loaded: the driver's path, or for an s3:// model
    (`source`) this pod's own whole copy."""
    return _fetch_model(source) if source else Path(model_dir)


def resolve_model_dir(spec: FineTuneJobSpec, base_dir: Path | None = None, *, weights: bool = True) -> Path:
    """The local folder of spec.baseModel.uri, checked to look like a Hugging Face model.

    A relative path is tried as given, then relative to `base_dir` (the job file's folder); an
    s3:// model is copied into this pod first (once: the copy is reused by a restarted run),
    without its weights when `weights` is false.
    """
    uri = spec.base_model.uri
    try:
        path = _fetch_model(uri, weights=weights) if object_store.is_remote(uri) else Path(local_path(uri))
    except ValueError as exc:
        raise TrainerConfigError(
            f"spec.baseModel.uri {uri!r}: {exc}; copy the model to a PVC or the model cache first"
        ) from exc
    if not path.is_absolute() and not path.exists() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if not path.is_dir():
        raise TrainerConfigError(
            f"spec.baseModel.uri {uri!r}: model directory {path} does not exist; point it at a "
            "Hugging Face-format folder (config.json, weights, tokenizer), e.g. one made by "
            "`kubetune models import-gguf`"
        )
    if not (path / "config.json").is_file():
        raise TrainerConfigError(
            f"spec.baseModel.uri {uri!r}: {path} has no config.json, so it is not a Hugging Face "
            "model folder; save the model with save_pretrained() or import it with `kubetune models import-gguf`"
        )
    return path


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_hardware(spec: FineTuneJobSpec, *, cuda: bool | None = None) -> None:
    """Fail before training when this machine cannot run the method as specified."""
    cuda = cuda_available() if cuda is None else cuda
    if spec.base_model.quantization is not None or spec.method.type == "qlora":
        if not cuda:
            raise TrainerConfigError(
                f"{QLORA_NEEDS_GPU} (spec.method.type {spec.method.type!r} with "
                "spec.baseModel.quantization: bitsandbytes quantized loading has no CPU kernels here)"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainerConfigError(
                "spec.baseModel.quantization needs the bitsandbytes package in the trainer image "
                "(pip install bitsandbytes), or use method lora without quantization"
            )
    if spec.base_model.dtype == "bfloat16" and cuda:
        import torch

        if not torch.cuda.is_bf16_supported():
            raise TrainerConfigError(
                "spec.baseModel.dtype bfloat16: this GPU has no bfloat16 support; use float16 or auto"
            )


def choose_dtype(spec: FineTuneJobSpec, device: str):
    """bfloat16 on GPUs that support it, float32 on CPU; spec.baseModel.dtype overrides."""
    import torch

    if spec.base_model.dtype != "auto":
        return getattr(torch, spec.base_model.dtype)
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(spec: FineTuneJobSpec):
    """A BitsAndBytesConfig from spec.baseModel.quantization, or None."""
    q = spec.base_model.quantization
    if q is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
    )


def load_tokenizer(spec: FineTuneJobSpec, model_dir: Path | None = None):
    from transformers import AutoTokenizer

    model_dir = model_dir or resolve_model_dir(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=spec.base_model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise TrainerConfigError(f"{model_dir}: cannot load the tokenizer ({exc})") from exc
    if tokenizer.pad_token_id is None:
        # Padding is masked out of attention and loss, so any token works; EOS is the convention.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: FineTuneJobSpec, model_dir: Path, *, device: str = "cpu", attn_implementation: str = "sdpa"):
    """The base model on `device`, ready for a method to be applied (nothing frozen yet).

    `attn_implementation` "flex_attention" (GPU) lets packed batches skip the masked blocks.
    """
    from transformers import AutoModelForCausalLM

    kwargs = dict(
        local_files_only=True,
        trust_remote_code=spec.base_model.trust_remote_code,
        attn_implementation=attn_implementation,
        dtype=choose_dtype(spec, device),
    )
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise TrainerConfigError(f"{model_dir}: cannot load the model ({exc})") from exc
    if quant is None:
        model.to(device)
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    if spec.hyperparameters.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
