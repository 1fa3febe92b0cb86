"""`kubetune prepare -f job.yaml [--debug N] [--output DIR] [--model DIR]`.

Runs the job's data preparation with the base model's tokenizer, without training, so a user
sees before spending GPU hours what is trained on: the dataset report and, with --debug, every
token of a few samples next to its label.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from kubetune.manifests import load_finetunejob

MASKED = "·"
DEBUG_DEFAULT = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="prepare a FineTuneJob's datasets and print the dataset report",
        description="Load, clean, deduplicate, redact, tokenise and split the datasets of a "
        "FineTuneJob exactly as training would, print the dataset report, and optionally show "
        "the tokens of a few samples next to their labels (masked tokens as ·).",
    )
    parser.add_argument("-f", "--file", required=True, type=Path, metavar="JOB", help="FineTuneJob manifest (YAML or JSON)")
    parser.add_argument(
        "--debug", type=int, nargs="?", const=DEBUG_DEFAULT, default=0, metavar="N",
        help=f"show N training samples as token/label tables (default N: {DEBUG_DEFAULT})",
    )
    parser.add_argument("--output", type=Path, metavar="DIR", help="write dataset_report.json to DIR")
    parser.add_argument("--model", type=Path, metavar="DIR", help="tokenizer folder (default: the job's baseModel.uri)")
    parser.set_defaults(func=run_prepare)


def _fail(message: str) -> int:
    print(f"kubetune prepare: {message}", file=sys.stderr)
    return 1


def resolve_model_dir(spec, job_dir: Path, override: Path | None) -> Path:
    from kubetune.api.uris import local_path

    if override is not None:
        candidates = [override]
        origin = "--model"
    else:
        try:
            raw = Path(local_path(spec.base_model.uri))
        except ValueError as exc:
            raise ValueError(f"baseModel.uri: {exc}; pass --model DIR with a local copy") from None
        candidates = [raw] if raw.is_absolute() else [raw, job_dir / raw]
        origin = f"baseModel.uri {spec.base_model.uri!r}"
    for path in candidates:
        if path.is_dir():
            return path
    raise ValueError(
        f"{origin}: no model folder at {candidates[-1]}; pass --model DIR with the base model's "
        "tokenizer (models are never downloaded at run time)"
    )


def run_prepare(args: argparse.Namespace) -> int:
    from kubetune.manifests import ManifestFileError

    from .data_prepare import DataError, prepare

    try:
        job = load_finetunejob(args.file)
        spec = job.spec
        model_dir = resolve_model_dir(spec, args.file.resolve().parent, args.model)
    except (ManifestFileError, ValueError) as exc:
        return _fail(str(exc))
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=spec.base_model.trust_remote_code)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot load the tokenizer from {model_dir}: {exc}")
    try:
        data = prepare(spec, tokenizer, base_dir=args.file.resolve().parent, log=print)
    except DataError as exc:
        return _fail(str(exc))
    if args.output is not None:
        path = write_report(data.report, args.output)
        print(f"report written to {path}")
    if args.debug:
        origins = data.extras.get("train_origins", [])
        for i, sample in enumerate(data.train[: args.debug]):
            origin = origins[i] if i < len(origins) else "?"
            print()
            print(render_sample(sample, tokenizer, title=f"sample {i + 1} of {len(data.train)} from {origin}"))
    return 0


def write_report(report: dict, directory: Path) -> Path:
    """Write dataset_report.json atomically (temp sibling, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "dataset_report.json"
    fd, tmp = tempfile.mkstemp(prefix=".dataset_report.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _show(tokenizer, token_id: int) -> str:
    return json.dumps(tokenizer.decode([token_id]), ensure_ascii=False)


def token_table(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Rows `index  token  label`, the label shown as the token it trains on, masked as ·."""
    shown = [_show(tokenizer, t) for t in ids]
    width = max([len("token")] + [len(s) for s in shown])
    lines = [f"{'#':>5}  {'token':<{width}}  label"]
    for i, (text, label) in enumerate(zip(shown, labels)):
        lines.append(f"{i:>5}  {text:<{width}}  {MASKED if label == -100 else _show(tokenizer, label)}")
    return lines


def render_sample(sample, tokenizer, *, title: str) -> str:
    """A token/label table of an SftSample, or of a PreferenceSample's prompt and both answers."""
    from .data_prepare import SftSample

    if isinstance(sample, SftSample):
        trained = sum(1 for lab in sample.labels if lab != -100)
        head = f"{title}: {len(sample.input_ids)} tokens, {trained} with loss, weight {sample.weight:g}"
        return "\n".join([head] + token_table(tokenizer, sample.input_ids, sample.labels))
    parts = [f"{title}: preference pair"]
    parts += ["prompt (no loss):"] + token_table(tokenizer, sample.prompt_ids, [-100] * len(sample.prompt_ids))
    parts += ["chosen:"] + token_table(tokenizer, sample.chosen_ids, sample.chosen_ids)
    parts += ["rejected:"] + token_table(tokenizer, sample.rejected_ids, sample.rejected_ids)
    return "\n".join(parts)
