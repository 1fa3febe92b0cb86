"""Half Fine-Tuning (arXiv 2404.18466): each stage trains a random half of every transformer block.

Per block and stage, at category level: 2 of the 4 attention projections are frozen, 1 of the 2
norms, and 2 or 1 of the 3 FFN matrices, alternating from block to block so that half of the
FFN is frozen overall. Embeddings, the final norm and the output head stay frozen. The draw is
seeded by (seed, stage) so a run, and a resumed run, pick the same halves.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from torch import nn

from .errors import TrainerConfigError

log = logging.getLogger(__name__)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "ffn": ("gate_proj", "up_proj", "down_proj"),
    "norm": ("input_layernorm", "post_attention_layernorm"),
}


@dataclass(frozen=True)
class BlockSelection:
    block: int
    frozen: dict[str, tuple[str, ...]]
    trainable: dict[str, tuple[str, ...]] = field(default_factory=dict)


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the longest ModuleList named `layers`, `h` or `blocks`."""
    best: nn.ModuleList | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks"):
            if best is None or len(module) > len(best):
                best = module
    if best is None or len(best) == 0:
        raise TrainerConfigError(
            f"{type(model).__name__}: cannot find the transformer blocks (a ModuleList named layers, h or blocks)"
        )
    return best


def _category_modules(block: nn.Module, index: int) -> dict[str, dict[str, nn.Module]]:
    found: dict[str, dict[str, nn.Module]] = {c: {} for c in CATEGORIES}
    for name, module in block.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        for category, leaves in CATEGORIES.items():
            if leaf in leaves and leaf not in found[category]:
                found[category][leaf] = module
    missing = [f"{c}: {sorted(set(CATEGORIES[c]) - set(found[c]))}" for c in CATEGORIES if len(found[c]) != len(CATEGORIES[c])]
    if missing:
        raise TrainerConfigError(
            f"method hft needs Llama-style blocks (q/k/v/o_proj, gate/up/down_proj, two norms); "
            f"block {index} lacks {'; '.join(missing)}: use method full, freeze or lora for this model"
        )
    return found


def select_halves(num_blocks: int, *, seed: int, stage: int) -> list[BlockSelection]:
    """Which modules each block freezes in `stage` (pure, so tests and logs can check it)."""
    rng = random.Random(f"hft:{seed}:{stage}")
    selection = []
    for i in range(num_blocks):
        ffn_frozen = 2 if (i + stage) % 2 == 0 else 1
        counts = {"attention": 2, "ffn": ffn_frozen, "norm": 1}
        frozen = {c: tuple(sorted(rng.sample(CATEGORIES[c], counts[c]))) for c in CATEGORIES}
        trainable = {c: tuple(sorted(set(CATEGORIES[c]) - set(frozen[c]))) for c in CATEGORIES}
        selection.append(BlockSelection(i, frozen, trainable))
    return selection


def stage_of(step: int, total_steps: int, stages: int) -> int:
    """Stage index of an optimizer step: the steps are split into `stages` equal parts."""
    stages = max(1, min(stages, total_steps))
    return min(stages - 1, step * stages // max(1, total_steps))


def hft_parameter_names(model: nn.Module) -> set[str]:
    """Every parameter HFT may train in some stage (what a checkpoint must keep)."""
    blocks = find_blocks(model)
    block_param_ids = set()
    for i, block in enumerate(blocks):
        for modules in _category_modules(block, i).values():
            for module in modules.values():
                block_param_ids.update(id(p) for p in module.parameters())
    return {n for n, p in model.named_parameters() if id(p) in block_param_ids}


def apply_stage(model: nn.Module, *, seed: int, stage: int) -> list[BlockSelection]:
    """Freeze everything, then unfreeze this stage's trainable half of every block."""
    blocks = find_blocks(model)
    per_block = [_category_modules(block, i) for i, block in enumerate(blocks)]
    selection = select_halves(len(blocks), seed=seed, stage=stage)
    for p in model.parameters():
        p.requires_grad_(False)
    for sel, modules in zip(selection, per_block):
        for category, leaves in sel.trainable.items():
            for leaf in leaves:
                for p in modules[category][leaf].parameters():
                    p.requires_grad_(True)
    log.info(
        "hft stage %d (seed %d): frozen per block %s",
        stage, seed, "; ".join(f"{s.block}: {sum(s.frozen.values(), ())}" for s in selection),
    )
    return selection
