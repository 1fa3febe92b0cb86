"""The `kubetune` command. Each component registers its own subcommands.

Component modules are imported lazily and only for their own subcommands' parsers, so
`kubetune validate` works with nothing but the base install, and the operator image never
imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

# (module with `register(subparsers)`, subcommands it provides, the pip extra that installs it)
COMPONENTS: list[tuple[str, tuple[str, ...], str]] = [
    ("kubetune.api_cli", ("validate", "crds", "version"), ""),
    ("kubetune.trainer.cli_prepare", ("prepare",), "trainer"),
    ("kubetune.trainer.cli_train", ("train",), "trainer"),
    ("kubetune.trainer.cli_models", ("models",), "trainer"),
    ("kubetune.operator.cli", ("operator",), "operator"),
    ("kubetune.serving.cli", ("serve",), "serving"),
    ("kubetune.monitoring.cli", ("monitor",), "monitoring"),
    ("kubetune.quickstart", ("quickstart",), "dev"),
    ("kubetune.fetch", ("fetch",), "trainer"),
]


def _unavailable(name: str, extra: str, reason: str | None) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        install = f"pip install 'kubetune[{extra}]'" if extra else "reinstall kubetune"
        print(f"kubetune {name}: not available in this build ({reason or 'its component is not installed'}; "
              f"{install})", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune",
        description="Fine-tune LLMs on Kubernetes, serve them, and keep them healthy.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name, names, extra in COMPONENTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and not module_name.startswith(exc.name) and exc.name != module_name:
                # The component exists but one of its dependencies is missing.
                reason = f"needs the '{exc.name}' package"
            else:
                reason = None
            for name in names:
                sub = subparsers.add_parser(name, help=f"(unavailable{': ' + reason if reason else ''})")
                sub.set_defaults(func=_unavailable(name, extra, reason))
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
