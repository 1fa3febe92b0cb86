"""Stage 6, export: the artifact layout of docs/contracts.md, written all at once or not at all.

The whole artifact is built in a hidden sibling of the output folder and then swapped into
place with one atomic rename (Linux `renameat2(RENAME_EXCHANGE)`, two renames elsewhere). A
failure at any point leaves the previous artifact untouched; `checkpoints/` and
`progress.jsonl` (and its plot, progress.svg) of the output folder are carried over, never lost.

Adapters are written in the PEFT format vLLM loads: adapter_config.json +
adapter_model.safetensors, no `modules_to_save` unless the vocabulary changed (vLLM rejects
them otherwise), rank checked against the deployment's `--max-lora-rank` when given.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import ADAPTER_METHODS

from .manifest import MANIFEST_FILE, build_manifest, dir_digest, weights_digest
from .model_card import render_model_card

KEEP_FROM_PREVIOUS = ("checkpoints", "progress.jsonl", "progress.svg")
"""Entries of an existing output folder that survive a re-export (written by training)."""


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message says what to change."""


# ----------------------------------------------------------------------------- small helpers


def _jsonable(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in items]
    if hasattr(obj, "model_dump"):
        return _jsonable(obj.model_dump(by_alias=True, mode="json", exclude_none=True))
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _jsonable(obj.item())
    return str(obj)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


def _reference_rows(reference: Any) -> list[dict]:
    rows = []
    for r in reference or []:
        if isinstance(r, dict):
            rows.append({"prompt": r.get("prompt", ""), "response": r.get("response", "")})
        elif isinstance(r, (tuple, list)):
            rows.append({"prompt": r[0], "response": r[1] if len(r) > 1 else ""})
        else:
            rows.append({"prompt": getattr(r, "prompt", ""), "response": getattr(r, "response", "")})
    return rows


def _unwrap(model):
    """The model under a DistributedDataParallel wrapper, if any."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def _base_vocab_size(base_model_dir: Path) -> int | None:
    try:
        config = json.loads((base_model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")


# ----------------------------------------------------------------------------- adapter checks


def adapter_config_of(model):
    """The active PEFT config of a PeftModel (raises ExportError for a plain model)."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        raise ExportError("method is an adapter method but the model has no PEFT adapter to export")
    name = getattr(model, "active_adapter", None) or next(iter(configs))
    if isinstance(name, (list, tuple)):
        name = name[0]
    return configs[name]


def check_adapter(model, *, base_vocab: int | None, max_lora_rank: int | None) -> bool:
    """Validate the adapter for vLLM before anything is written; returns whether the vocabulary changed."""
    cfg = adapter_config_of(model)
    rank = getattr(cfg, "r", None)
    if max_lora_rank is not None and rank is not None and rank > max_lora_rank:
        raise ExportError(
            f"LoRA rank {rank} is above the deployment's max LoRA rank {max_lora_rank}: lower "
            "spec.method.lora.rank or raise the ModelDeployment's engine maxLoraRank"
        )
    vocab = model.get_input_embeddings().weight.shape[0]
    vocab_changed = base_vocab is not None and vocab != base_vocab
    if getattr(cfg, "modules_to_save", None) and not vocab_changed:
        raise ExportError(
            f"the adapter trains whole modules ({sorted(cfg.modules_to_save)}) but the vocabulary is unchanged; "
            "vLLM cannot serve modules_to_save: train them as LoRA targets instead"
        )
    return vocab_changed


def _fix_adapter_files(adapter_dir: Path, *, base_uri: str, vocab_changed: bool) -> None:
    from safetensors import safe_open

    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_uri
    if not vocab_changed:
        config["modules_to_save"] = None
    if isinstance(config.get("target_modules"), list):  # peft writes a set: order follows the hash seed
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExportError(f"{weights} was not written: the PEFT version may not support safetensors")
    with safe_open(str(weights), "pt") as f:
        extra = [k for k in f.keys() if "lora_" not in k]
    if extra and not vocab_changed:
        raise ExportError(f"adapter weights hold non-LoRA tensors {extra[:3]}: vLLM would reject them")


def _target_modules(cfg) -> list[str]:
    targets = getattr(cfg, "target_modules", None)
    if targets is None:
        return []
    if isinstance(targets, str):
        return [targets]
    # peft expands `all-linear` to full module paths; the manifest lists module names.
    return sorted({t.rsplit(".", 1)[-1] for t in targets})


# ----------------------------------------------------------------------------- weights


def save_adapter(model, tokenizer, path: Path, *, base_uri: str, vocab_changed: bool) -> None:
    model.save_pretrained(str(path), safe_serialization=True, save_embedding_layers=vocab_changed)
    _fix_adapter_files(path, base_uri=base_uri, vocab_changed=vocab_changed)
    tokenizer.save_pretrained(str(path))


def merged_state_dict(peft_model) -> dict:
    """The base model's state dict with merged weights under the base model's own key names."""
    state = {}
    for key, value in peft_model.get_base_model().state_dict().items():
        if "lora_" in key or ".original_module." in key:
            continue
        key = key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        state[key] = value
    return state


def save_merged(peft_model, tokenizer, path: Path) -> None:
    """Merged weights, written without changing the in-memory adapter model.

    The adapter is merged in place, the weights are saved through a fresh model on the meta
    device (so nothing is copied), and the merge is undone in `finally`.
    """
    import torch

    base = peft_model.get_base_model()
    if getattr(base, "is_quantized", False) or getattr(base.config, "quantization_config", None):
        raise ExportError(
            "output.mergeAdapter with a quantized base (qlora) is not supported here: export the adapter and "
            "merge it into a bfloat16 copy of the base"
        )
    peft_model.merge_adapter()
    try:
        state = merged_state_dict(peft_model)
        with torch.device("meta"):
            fresh = type(base)(base.config)
        missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
        if unexpected:
            raise ExportError(f"merged weights do not fit the base architecture: unexpected {unexpected[:3]}")
        tied = {"lm_head.weight"} if getattr(base.config, "tie_word_embeddings", False) else set()
        if set(missing) - tied:
            raise ExportError(f"merged weights miss {sorted(set(missing) - tied)[:3]}")
        if tied & set(missing):
            fresh.tie_weights()
        fresh.generation_config = base.generation_config
        fresh.save_pretrained(str(path), safe_serialization=True)
    finally:
        peft_model.unmerge_adapter()
    tokenizer.save_pretrained(str(path))


def save_full(model, tokenizer, path: Path) -> None:
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))


# ----------------------------------------------------------------------------- atomic install


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically where the kernel can (renameat2 RENAME_EXCHANGE)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(b))
    aside = a.with_name(a.name + ".aside")
    os.rename(b, aside)
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(aside, b)
        raise
    os.rename(aside, a)


def _current_umask() -> int:
    """The process umask, read without setting it (os.umask would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def publish_modes(root: Path) -> None:
    """Ordinary umask modes: mkdtemp makes 0700 folders, which the serving pods' user cannot read."""
    umask = _current_umask()
    os.chmod(root, 0o777 & ~umask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def install_dir(staging: Path, output_dir: Path, keep: tuple[str, ...] = KEEP_FROM_PREVIOUS) -> None:
    """Put a fully written staging folder at output_dir, carrying over `keep` entries."""
    publish_modes(staging)
    if not output_dir.exists():
        os.rename(staging, output_dir)
        return
    if not output_dir.is_dir():
        raise ExportError(f"{output_dir} exists and is not a directory")
    moved: list[str] = []
    try:
        for name in keep:
            src = output_dir / name
            if src.exists() or src.is_symlink():
                if (staging / name).exists():
                    shutil.rmtree(staging / name) if (staging / name).is_dir() else (staging / name).unlink()
                os.rename(src, staging / name)
                moved.append(name)
        _exchange(staging, output_dir)
    except BaseException:
        for name in moved:
            os.rename(staging / name, output_dir / name)
        raise
    shutil.rmtree(staging, ignore_errors=True)  # the previous artifact


# ----------------------------------------------------------------------------- the export


def export_artifact(
    *,
    model,
    tokenizer,
    job,
    output_dir: Path,
    evaluation: dict,
    prepared,
    base_model_dir: Path,
    max_lora_rank: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the artifact (docs/contracts.md) and return the partial FineTuneJob.status for sinks.

    `job` is the FineTuneJob; `prepared` is the data preparation result (`digest`, `report`,
    `reference`); `evaluation` is the report of `evaluate_job`. Returns
    `{"artifact": {...}, "evaluation": {...}}` in wire form.
    """
    spec = job.spec
    model = _unwrap(model)
    output_dir = Path(output_dir)
    base_model_dir = Path(base_model_dir)
    is_adapter = spec.method.type in ADAPTER_METHODS
    base_vocab = _base_vocab_size(base_model_dir)

    # Everything that can be refused is checked before a byte is written.
    vocab_changed = check_adapter(model, base_vocab=base_vocab, max_lora_rank=max_lora_rank) if is_adapter else False
    if spec.output.merge_adapter and not is_adapter:
        raise ExportError("output.mergeAdapter only applies to adapter methods (lora, qlora, dora)")
    log(f"export: digest of the base model weights in {base_model_dir}")
    base_digest = weights_digest(base_model_dir)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.export-", dir=output_dir.parent))
    try:
        artifact: dict[str, Any]
        if is_adapter:
            log("export: writing the adapter (PEFT safetensors)")
            save_adapter(model, tokenizer, staging / "adapter", base_uri=spec.base_model.uri, vocab_changed=vocab_changed)
            cfg = adapter_config_of(model)
            artifact = {
                "kind": "adapter",
                "path": "adapter",
                "digest": dir_digest(staging / "adapter"),
                "loraRank": getattr(cfg, "r", None),
                "targetModules": _target_modules(cfg),
            }
            if spec.output.merge_adapter:
                log("export: writing merged weights (mergeAdapter)")
                save_merged(model, tokenizer, staging / "merged")
                artifact["merged"] = {"path": "merged", "digest": dir_digest(staging / "merged")}
        else:
            log("export: writing full weights (safetensors)")
            save_full(model, tokenizer, staging / "merged")
            artifact = {"kind": "full", "path": "merged", "digest": dir_digest(staging / "merged")}

        reference = _reference_rows(getattr(prepared, "reference", None))
        with open(staging / "reference.jsonl", "w", encoding="utf-8") as f:
            for row in reference:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        dataset_report = _jsonable(getattr(prepared, "report", None))
        if dataset_report is not None:
            _write_json(staging / "dataset_report.json", dataset_report)
        _write_json(staging / "evaluation.json", evaluation)

        metrics = {k: v for k, v in (_jsonable(evaluation.get("metrics")) or {}).items() if v is not None}
        gates = _jsonable(evaluation.get("gates") or [])
        manifest = build_manifest(
            job_name=(job.metadata or {}).get("name"),
            job_namespace=(job.metadata or {}).get("namespace"),
            base_uri=spec.base_model.uri,
            base_revision=spec.base_model.revision,
            base_digest=base_digest,
            artifact=artifact,
            dataset_digest=getattr(prepared, "digest", None),
            config=spec.to_wire(),
            metrics=metrics,
            gates=gates,
            gates_passed=bool(evaluation.get("passed", all(g.get("passed") for g in gates))),
            chat_template=getattr(tokenizer, "chat_template", None),
            reference_rows=len(reference),
        )
        (staging / "README.md").write_text(render_model_card(manifest, evaluation, dataset_report), encoding="utf-8")
        _write_json(staging / MANIFEST_FILE, manifest)
        install_dir(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"export: artifact {artifact['kind']} at {output_dir} ({artifact['digest']})")

    uri = spec.output.uri.rstrip("/")
    status_gates = [{k: v for k, v in g.items() if v is not None} for g in gates]
    return {
        "artifact": {"uri": spec.output.uri, "digest": artifact["digest"], "kind": artifact["kind"]},
        "evaluation": {
            "metrics": metrics,
            "gates": status_gates,
            "passed": manifest["gatesPassed"],
            "reportUri": f"{uri}/evaluation.json",
        },
    }
