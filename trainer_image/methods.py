"""Fine-tuning methods: which parameters train. full, freeze, lora, qlora, dora; hft in methods_hft.

`apply_method` turns a freshly loaded base model into the model the loop trains and leaves
`requires_grad` set accordingly; the optimizer then holds only those parameters.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from kubetune.api.finetunejob import ADAPTER_METHODS, FineTuneJobSpec, FreezeConfig, HftConfig, LoraConfig

from . import methods_hft
from .errors import TrainerConfigError

log = logging.getLogger(__name__)


def is_adapter_method(spec: FineTuneJobSpec) -> bool:
    return spec.method.type in ADAPTER_METHODS


def lora_settings(spec: FineTuneJobSpec) -> LoraConfig:
    return spec.method.lora or LoraConfig()


def check_method(spec: FineTuneJobSpec, model_config: dict[str, Any]) -> None:
    """Pre-flight checks against the model's config.json, before any worker starts."""
    layers = model_config.get("num_hidden_layers") or model_config.get("n_layer")
    if spec.method.type == "freeze" and layers:
        wanted = (spec.method.freeze or FreezeConfig()).trainable_layers
        if wanted > layers:
            raise TrainerConfigError(
                f"spec.method.freeze.trainableLayers is {wanted} but the model has {layers} blocks; "
                f"use at most {layers} (or method full)"
            )
    if spec.method.type == "hft" and layers:
        stages = (spec.method.hft or HftConfig()).stages
        if spec.hyperparameters.max_steps is not None and stages > spec.hyperparameters.max_steps:
            raise TrainerConfigError(
                f"spec.method.hft.stages is {stages} but hyperparameters.maxSteps is "
                f"{spec.hyperparameters.max_steps}; a stage needs at least one step"
            )


def peft_config(spec: FineTuneJobSpec):
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType

    lora = lora_settings(spec)
    targets: str | list[str] = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft: every linear layer except the output head
    return PeftLoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_rslora=lora.rs_lora,
        use_dora=spec.method.type == "dora",
        bias="none",
    )


def _apply_freeze(model: nn.Module, cfg: FreezeConfig) -> None:
    blocks = methods_hft.find_blocks(model)
    if cfg.trainable_layers > len(blocks):
        raise TrainerConfigError(
            f"spec.method.freeze.trainableLayers is {cfg.trainable_layers} but the model has "
            f"{len(blocks)} blocks; use at most {len(blocks)}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = range(len(blocks) - cfg.trainable_layers, len(blocks)) if cfg.position == "last" else range(cfg.trainable_layers)
    for i in chosen:
        for p in blocks[i].parameters():
            p.requires_grad_(True)
    if cfg.train_embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                for p in module.parameters():
                    p.requires_grad_(True)
    log.info("freeze: training blocks %s of %d%s", list(chosen), len(blocks), " and embeddings" if cfg.train_embeddings else "")


def apply_method(model: nn.Module, spec: FineTuneJobSpec) -> nn.Module:
    """The model to train, with requires_grad set for the method (a PeftModel for adapters)."""
    kind = spec.method.type
    if kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if kind == "freeze":
        _apply_freeze(model, spec.method.freeze or FreezeConfig())
        return model
    if kind == "hft":
        hft = spec.method.hft or HftConfig()
        methods_hft.apply_stage(model, seed=hft.seed, stage=0)
        return model
    if kind in ADAPTER_METHODS:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if kind == "qlora":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=spec.hyperparameters.gradient_checkpointing
            )
        try:
            peft_model = get_peft_model(model, peft_config(spec))
        except ValueError as exc:
            raise TrainerConfigError(f"spec.method.lora.targetModules: {exc}") from exc
        return peft_model
    raise TrainerConfigError(f"spec.method.type {kind!r} is not supported")


def adapter_autocast_dtype(spec: FineTuneJobSpec, device: str):
    """bfloat16 when LoRA-family adapters train on a bfloat16 CUDA base, else None.

    peft keeps adapter weights in float32 (stable AdamW updates) and casts every adapter input
    to float32, so each adapted layer runs float32 matmuls, stores a float32 copy of its input
    for backward and adds in float32: on a GPU that made LoRA slower than full fine-tuning.
    Under bfloat16 autocast the adapters compute in bfloat16 on the base's own activations
    while their master weights and optimizer state stay float32 (mixed precision).
    """
    import torch

    from .model_init import choose_dtype

    if not is_adapter_method(spec) or not device.startswith("cuda"):
        return None
    quant = spec.base_model.quantization
    compute = getattr(torch, quant.compute_dtype) if quant is not None else choose_dtype(spec, device)
    return torch.bfloat16 if compute == torch.bfloat16 else None


def keep_adapter_inputs_in_base_dtype(model: nn.Module) -> int:
    """Stop peft from casting adapter inputs to float32 (use only under autocast); returns layers changed."""
    changed = 0
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def persistent_parameter_names(model: nn.Module, spec: FineTuneJobSpec) -> set[str]:
    """Parameters a checkpoint must keep: all that the method trains in any stage."""
    if spec.method.type == "hft":
        return methods_hft.hft_parameter_names(model)
    return {n for n, _ in trainable_parameters(model)}


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
