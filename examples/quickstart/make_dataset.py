#!/usr/bin/env python3
"""Write the quickstart's data: a made-up product catalogue as chat examples.

    python examples/quickstart/make_dataset.py --out out/quickstart/data [--seed 7]

train.jsonl   chat examples {"messages": [user entry, assistant JSON record]}
eval.jsonl    held-out {"prompt", "reference"} on products never seen in training
traffic.jsonl more held-out prompts, sent through the gateway as live traffic
shifted.jsonl off-topic support questions, the traffic the drift monitor must flag

The same seed writes byte-identical files (the generator is kubetune.quickstart_data).
"""

from __future__ import annotations

import argparse
import sys

from kubetune.quickstart_data import write_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/quickstart/data", help="output folder (default: out/quickstart/data)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--train", type=int, default=240, help="training examples (default 240)")
    parser.add_argument("--eval", type=int, default=8, help="held-out evaluation prompts (default 8)")
    parser.add_argument("--traffic", type=int, default=40, help="held-out prompts for live traffic (default 40)")
    parser.add_argument("--shifted", type=int, default=40, help="off-topic prompts for live traffic (default 40)")
    args = parser.parse_args(argv)
    try:
        files = write_dataset(args.out, seed=args.seed, train_rows=args.train, eval_rows=args.eval,
                              traffic_rows=args.traffic, shifted_rows=args.shifted)
    except ValueError as exc:
        print(f"make_dataset: {exc}", file=sys.stderr)
        return 2
    for path in (files.train, files.eval, files.traffic, files.shifted):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
