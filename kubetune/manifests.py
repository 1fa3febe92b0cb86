"""Reading multi-document YAML/JSON manifests with document indexes and line numbers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ManifestFileError(ValueError):
    """A manifest file that cannot be read or parsed; the message names file and line."""


@dataclass(frozen=True)
class Document:
    index: int
    line: int | None
    """1-based line where the document starts."""
    body: Any


def load_documents(path: Path | str) -> list[Document]:
    """Every non-empty document in a YAML (or JSON) file, '-' meaning stdin."""
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    except OSError as exc:
        raise ManifestFileError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        bodies = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestFileError(f"{where}: invalid YAML: {problem}") from exc
    docs = []
    for index, (node, body) in enumerate(zip(nodes, bodies)):
        if body is None:
            continue
        docs.append(Document(index, node.start_mark.line + 1 if node is not None else None, body))
    return docs


def load_finetunejob(path: Path | str):
    """The first FineTuneJob in a manifest file, validated with every error reported.

    Raises ValueError (ManifestFileError for unreadable files) naming the file and line.
    """
    from kubetune.api import ManifestError, parse_finetunejob

    for doc in load_documents(path):
        if isinstance(doc.body, dict) and doc.body.get("kind") == "FineTuneJob":
            try:
                return parse_finetunejob(doc.body)
            except ManifestError as exc:
                errors = "\n  ".join(str(e) for e in exc.errors)
                raise ValueError(f"{path} (line {doc.line}): invalid FineTuneJob:\n  {errors}") from None
    raise ValueError(f"{path}: no FineTuneJob document found")
