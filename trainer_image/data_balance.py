"""Seeded stratified split, mixing sources by weight, and class balancing (pure, seeded).

Counts are allocated with the largest-remainder method, so the validation size and the mix are
exact (no rounding drift) and every stratum or source gets its proportional share.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Iterable, TypeVar

from .data_errors import DataError
from .data_prepare import SftSample
from .data_tokenize import Tokenised

T = TypeVar("T")
NO_LABEL = "(none)"


def label_field(spec, source) -> str | None:
    """The column holding the class label: imbalance.labelField, else the source's columns.label."""
    imbalance = spec.preprocessing.imbalance
    if imbalance is not None and imbalance.label_field:
        return imbalance.label_field
    return source.columns.label if source.columns is not None else None


def _label(item: Tokenised) -> str:
    return item.example.label if item.example.label is not None else NO_LABEL


def allocate(sizes: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts proportional to `sizes` summing to `total` (largest remainder, ties by key)."""
    mass = sum(sizes.values())
    if mass <= 0 or total <= 0:
        return {k: 0 for k in sizes}
    quotas = {k: total * v / mass for k, v in sizes.items()}
    counts = {k: int(q) for k, q in quotas.items()}
    rest = total - sum(counts.values())
    for k in sorted(quotas, key=lambda k: (-(quotas[k] - counts[k]), k))[:rest]:
        counts[k] += 1
    return counts


def stratified_split(items: list[Tokenised], fraction: float, *, seed: int) -> tuple[list[Tokenised], list[Tokenised]]:
    """Hold out `fraction` of the rows, stratified by (source, label); both keep input order."""
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[f"{item.example.source}\x1f{_label(item)}"].append(i)
    wanted = max(1, round(len(items) * fraction))
    quotas = allocate({k: len(v) for k, v in groups.items()}, wanted)
    held: set[int] = set()
    for key in sorted(groups):
        members = groups[key]
        held.update(random.Random(f"{seed}:split:{key}").sample(members, min(quotas[key], len(members))))
    train = [it for i, it in enumerate(items) if i not in held]
    validation = [it for i, it in enumerate(items) if i in held]
    return train, validation


def resample(rows: list[T], target: int, rng: random.Random) -> list[T]:
    """Exactly `target` rows: a sample without replacement when fewer, else whole copies plus a
    sample of the rest (so every row appears floor(target/n) or one more times)."""
    n = len(rows)
    if n == 0 or target <= 0:
        return []
    copies, extra = divmod(target, n)
    picked = sorted(rng.sample(range(n), extra))
    return rows * copies + [rows[i] for i in picked]


def mix_sources(train: list[Tokenised], sources: Iterable, *, seed: int) -> tuple[list[Tokenised], dict]:
    """Resample the training split so each source's share is weight / sum(weights); the total
    stays the number of rows. One source, or shares already equal to the natural ones, leave
    the data unchanged."""
    sources = list(sources)
    by_source: dict[str, list[Tokenised]] = {s.name: [] for s in sources}
    for item in train:
        by_source[item.example.source].append(item)
    present = [s for s in sources if by_source[s.name]]
    weights = {s.name: s.weight for s in present}
    targets = allocate(weights, len(train)) if len(present) > 1 else {s.name: len(by_source[s.name]) for s in present}
    mixed: list[Tokenised] = []
    report = {}
    for s in sources:
        rows = by_source[s.name]
        target = targets.get(s.name, 0)
        mixed += resample(rows, target, random.Random(f"{seed}:mix:{s.name}"))
        report[s.name] = {
            "rows": len(rows), "weight": s.weight, "mixedRows": target,
            "share": round(target / len(train), 4) if train else 0.0,
        }
    return mixed, report


def balance(train: list[Tokenised], spec, *, seed: int) -> tuple[list[Tokenised], dict[str, float] | None, int]:
    """Apply preprocessing.imbalance to the training split.
    Returns (rows, class weights or None, rows removed by undersampling)."""
    imbalance = spec.preprocessing.imbalance
    if imbalance is None or imbalance.strategy == "none" or not train:
        return train, None, 0
    by_class: dict[str, list[Tokenised]] = defaultdict(list)
    for item in train:
        by_class[_label(item)].append(item)
    if set(by_class) == {NO_LABEL}:
        raise DataError(
            f"preprocessing.imbalance.labelField {imbalance.label_field!r} is missing from every row: "
            "name a column that holds the class label"
        )
    counts = {k: len(v) for k, v in by_class.items()}
    rng = random.Random(f"{seed}:balance")
    if imbalance.strategy == "oversample":
        top = max(counts.values())
        out = [it for k in sorted(by_class) for it in resample(by_class[k], top, rng)]
        return out, None, 0
    if imbalance.strategy == "undersample":
        low = min(counts.values())
        keep = {id(it) for k in sorted(by_class) for it in resample(by_class[k], low, rng)}
        out = [it for it in train if id(it) in keep]
        return out, None, len(train) - len(out)
    # classWeights: inverse frequency, normalised so the mean weight over rows is 1
    if not isinstance(train[0].sample, SftSample):
        raise DataError(
            "preprocessing.imbalance.strategy classWeights weights the SFT loss; for dpo/orpo use "
            "oversample or undersample"
        )
    total, classes = len(train), len(counts)
    weights = {k: total / (classes * n) for k, n in counts.items()}
    out = []
    for item in train:
        w = weights[_label(item)]
        s = item.sample
        out.append(Tokenised(item.example, SftSample(s.input_ids, s.labels, w)))
    return out, {k: round(v, 6) for k, v in sorted(weights.items())}, 0


def class_counts_report(spec, train: list[Tokenised]) -> dict | None:
    """Class balance of the training split before balancing; None when there are no labels."""
    labels = [it.example.label for it in train]
    if all(label is None for label in labels):
        field = spec.preprocessing.imbalance.label_field if spec.preprocessing.imbalance else None
        return {"labelField": field, "strategy": _strategy(spec), "before": {}, "after": {}} if field else None
    imbalance = spec.preprocessing.imbalance
    return {
        "labelField": imbalance.label_field if imbalance and imbalance.label_field else None,
        "strategy": _strategy(spec),
        "before": dict(sorted(Counter(_label(it) for it in train).items())),
    }


def finish_class_report(report: dict | None, train: list[Tokenised], weights: dict[str, float] | None) -> None:
    if report is None:
        return
    report["after"] = dict(sorted(Counter(_label(it) for it in train).items()))
    if weights is not None:
        report["weights"] = weights


def _strategy(spec) -> str:
    imbalance = spec.preprocessing.imbalance
    return imbalance.strategy if imbalance is not None else "none"
