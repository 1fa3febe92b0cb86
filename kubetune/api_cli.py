"""`kubetune validate`, `kubetune crds generate|check`, `kubetune version`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubetune import __version__
from kubetune.manifests import ManifestFileError, load_documents


def register(subparsers: argparse._SubParsersAction) -> None:
    validate = subparsers.add_parser(
        "validate",
        help="check FineTuneJob/ModelDeployment manifests offline",
        description="Check manifests against the kubetune.io/v1alpha1 API (schema and cross-field "
        "rules) without a cluster. Prints every error with file, document index and field path; "
        "exits 1 on any error. Documents of other kinds are skipped and listed.",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE", help="YAML or JSON files ('-' for stdin)")
    validate.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    validate.set_defaults(func=run_validate)

    crds = subparsers.add_parser("crds", help="generate or check the CRD files from the API models")
    crds_sub = crds.add_subparsers(dest="crds_command", required=True, metavar="ACTION")
    gen = crds_sub.add_parser("generate", help="write crds/*.yaml")
    gen.add_argument("--dir", type=Path, default=None, help="output directory (default: the package's crds/)")
    gen.set_defaults(func=run_crds_generate)
    check = crds_sub.add_parser("check", help="exit 1 when crds/*.yaml are stale")
    check.add_argument("--dir", type=Path, default=None, help="directory to check (default: the package's crds/)")
    check.set_defaults(func=run_crds_check)

    version = subparsers.add_parser("version", help="print the kubetune and API versions")
    version.set_defaults(func=run_version)


def run_validate(args: argparse.Namespace) -> int:
    from kubetune.api import validate_object

    failures = 0
    for path in args.files:
        try:
            docs = load_documents(path)
        except ManifestFileError as exc:
            print(f"{exc}", file=sys.stderr)
            failures += 1
            continue
        for doc in docs:
            where = f"{path}[{doc.index}]" + (f" (line {doc.line})" if doc.line else "")
            kind = doc.body.get("kind") if isinstance(doc.body, dict) else None
            if kind not in ("FineTuneJob", "ModelDeployment"):
                if not args.quiet:
                    print(f"{where}: skipped kind {kind!r} (not a kubetune resource)")
                continue
            name = (doc.body.get("metadata") or {}).get("name", "?")
            errors = validate_object(doc.body)
            for error in errors:
                print(f"{where} {kind}/{name}: {error}", file=sys.stderr)
            failures += bool(errors)
            if not errors and not args.quiet:
                print(f"{where} {kind}/{name}: valid")
    return 1 if failures else 0


def run_crds_generate(args: argparse.Namespace) -> int:
    from kubetune.api import crdgen

    for path in crdgen.generate(args.dir or crdgen.CRD_DIR):
        print(f"wrote {path}")
    return 0


def run_crds_check(args: argparse.Namespace) -> int:
    from kubetune.api import crdgen

    stale = crdgen.stale(args.dir or crdgen.CRD_DIR)
    for path in stale:
        print(f"{path}: stale or missing; run `kubetune crds generate`", file=sys.stderr)
    if not stale:
        print("CRDs are up to date")
    return 1 if stale else 0


def run_version(_: argparse.Namespace) -> int:
    from kubetune.api import API_VERSION

    print(f"kubetune {__version__} (API {API_VERSION})")
    return 0
