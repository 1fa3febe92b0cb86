"""Training objectives written with plain torch: SFT, DPO and ORPO.

Every loss here returns a *sum* over the micro-batch plus what it was summed over; the loop
divides by the global count (all micro-batches of an optimizer step on all workers), so
gradient accumulation and data parallelism give the gradient of one big batch.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class LossParts:
    total: torch.Tensor
    """Sum to backpropagate (divide by the global count first)."""
    count: torch.Tensor
    """What `total` was summed over: loss tokens for SFT, pairs for DPO/ORPO."""
    metrics: dict[str, float]
    """Extra sums for logging (DPO reward accuracy and margins, summed over pairs)."""


def _shifted(logits: torch.Tensor, labels: torch.Tensor):
    return logits[:, :-1, :], labels[:, 1:]


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labels (shifted) and the mask of tokens that count."""
    logits, labels = _shifted(logits, labels)
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def sft_loss_sum(logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None) -> torch.Tensor:
    """Sum over loss tokens of weight * cross-entropy (labels aligned with inputs, shifted here)."""
    logits, shifted = _shifted(logits, labels)
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    if loss_weights is None:
        weights = (shifted != IGNORE_INDEX).float().reshape(-1)
    else:
        weights = loss_weights[:, 1:].reshape(-1).to(per_token.dtype)
    return (per_token * weights).sum()


def output_head(model):
    """The LM head (output embedding) module of a causal LM, a PeftModel or a DDP-wrapped one."""
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    getter = getattr(inner, "get_output_embeddings", None)
    return getter() if getter is not None else None


@contextlib.contextmanager
def head_only_at(head, positions: torch.Tensor):
    """Run `head` only on the hidden states at `positions` ([B, L] bool) during the block.

    The model then returns logits of shape [N, vocab] for the N selected positions, in
    row-major order. Answers-only SFT needs logits where the next label carries loss only
    (often under half the tokens); the LM head and the float32 cross-entropy over a 49k
    vocabulary are the largest single costs of a small model's step, in time and memory.
    A forward pre-hook (not a call into submodules) keeps DDP's gradient hooks intact.
    """
    def select(_module, args):
        hidden = args[0]
        return (hidden[positions],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def sft(model, batch: dict, *, head=None) -> LossParts:
    """Summed SFT loss; with `head` (the model's LM head) logits are computed only where a label counts."""
    labels = batch["labels"]
    inputs = dict(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    count = batch["num_loss_tokens"].to(labels.device).float()
    if head is None:
        out = model(**inputs)
        return LossParts(sft_loss_sum(out.logits, labels, batch.get("loss_weights")), count, {})
    targets_at = labels[:, 1:] != IGNORE_INDEX  # next-token labels that carry loss
    positions = F.pad(targets_at, (0, 1), value=False)  # logits at t predict label t+1
    with head_only_at(head, positions):
        logits = model(**inputs).logits
    per_token = F.cross_entropy(logits.float(), labels[:, 1:][targets_at], reduction="none")
    weights = batch.get("loss_weights")
    if weights is not None:
        per_token = per_token * weights[:, 1:][targets_at].to(per_token.dtype)
    return LossParts(per_token.sum(), count, {})


# ---------------------------------------------------------------- preference objectives


def concat_pairs(batch: dict, pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen then rejected in one batch (padded to one width) so a single forward scores both."""
    width = max(batch["chosen_input_ids"].size(1), batch["rejected_input_ids"].size(1))

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, width - t.size(1)), value=value)

    return {
        "input_ids": torch.cat([pad(batch["chosen_input_ids"], pad_id), pad(batch["rejected_input_ids"], pad_id)]),
        "labels": torch.cat([pad(batch["chosen_labels"], IGNORE_INDEX), pad(batch["rejected_labels"], IGNORE_INDEX)]),
        "attention_mask": torch.cat([pad(batch["chosen_attention_mask"], 0), pad(batch["rejected_attention_mask"], 0)]),
    }


def sequence_logps(model, pairs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of response log-probs, response token counts, logits) per row."""
    out = model(input_ids=pairs["input_ids"], attention_mask=pairs["attention_mask"], use_cache=False)
    logps, mask = token_logps(out.logits, pairs["labels"])
    return logps.sum(-1), mask.sum(-1).clamp(min=1), out.logits


def dpo_pair_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss -log sigmoid(beta * (policy margin - reference margin)) and the reward margin."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    return -F.logsigmoid(margin), margin.detach()


def orpo_pair_losses(
    chosen_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair ORPO loss: NLL of the chosen answer + beta * -log sigmoid(log odds ratio)."""
    mean_c = chosen_logps / chosen_tokens
    mean_r = rejected_logps / rejected_tokens
    # log(p / (1 - p)) with p = exp(mean log-prob); log1p(-exp(x)) is stable for x < 0
    log_odds = (mean_c - torch.log1p(-torch.exp(mean_c).clamp(max=1 - 1e-6))) - (
        mean_r - torch.log1p(-torch.exp(mean_r).clamp(max=1 - 1e-6))
    )
    ratio_term = -F.logsigmoid(log_odds)
    return -mean_c + beta * ratio_term, log_odds.detach()


class Reference:
    """The DPO reference policy: the base with the adapter disabled (LoRA family), else a frozen copy."""

    def __init__(self, model, *, adapter: bool):
        self.adapter = adapter
        self._copy = None
        if not adapter:
            self._copy = copy.deepcopy(model).eval()
            for p in self._copy.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def logps(self, policy, pairs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.adapter:
            was_training = policy.training
            policy.eval()  # no dropout in the reference
            try:
                with policy.disable_adapter():
                    logps, _, _ = sequence_logps(policy, pairs)
            finally:
                policy.train(was_training)
            return logps
        logps, _, _ = sequence_logps(self._copy, pairs)
        return logps


def preference(kind: str, model, batch: dict, *, beta: float, pad_id: int, reference: Reference | None,
               unwrapped=None) -> LossParts:
    """DPO or ORPO on one micro-batch of pairs; `model` may be DDP-wrapped, `unwrapped` is the bare model."""
    pairs = concat_pairs(batch, pad_id)
    n = batch["chosen_input_ids"].size(0)
    logps, tokens, _ = sequence_logps(model, pairs)
    if kind == "dpo":
        if reference is None:
            raise ValueError("dpo needs a reference model")
        ref = reference.logps(unwrapped if unwrapped is not None else model, pairs)
        losses, margin = dpo_pair_losses(logps[:n], logps[n:], ref[:n], ref[n:], beta)
    elif kind == "orpo":
        losses, margin = orpo_pair_losses(logps[:n], tokens[:n], logps[n:], tokens[n:], beta)
    else:
        raise ValueError(f"unknown preference objective {kind!r}")
    metrics = {"rewardAccuracy": float((margin > 0).float().sum()), "rewardMargin": float(margin.sum())}
    return LossParts(losses.sum(), torch.tensor(float(n), device=losses.device), metrics)
