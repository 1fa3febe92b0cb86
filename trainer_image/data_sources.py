"""Reading dataset sources into raw records, each tagged with where it came from (file:line).

Supported: JSON lines, a JSON array, CSV and Parquet files, a folder of such files, and a folder
written by `datasets.Dataset.save_to_disk`; from a local path, `file://`, `pvc://` (the mounted
claim) or `s3://` (through fsspec; needs the `s3fs` package). Malformed records are not fatal
here: they are returned as `BadRow`s for the caller to count against the spec's threshold.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kubetune.api.uris import local_path, parse_uri

from .data_errors import DataError

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")
BAD_ROWS_LOGGED = 20
"""Malformed rows logged one by one; the rest are only counted."""
BAD_ROW_EXAMPLES = 10
"""Malformed rows quoted in the report and in the threshold error."""


@dataclass(frozen=True)
class BadRow:
    origin: str
    """`file:line` (or `file: item N` where a format has no lines)."""
    reason: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.reason}"


@dataclass
class LoadedSource:
    path: str
    """Where the data was read from (local path or the s3 URI)."""
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(origin, record) for every well-formed record kept (after maxSamples)."""
    bad: list[BadRow] = field(default_factory=list)
    rows_read: int = 0
    """Records read, well-formed or not, before maxSamples."""


def load_source(source, *, base_dir: Path | None = None, seed: int = 0, log: Callable[[str], None] = print) -> LoadedSource:
    """Read one `DatasetSource` of the spec. Raises DataError when it cannot be read at all."""
    uri = source.uri
    try:
        scheme = parse_uri(uri).scheme
    except ValueError as exc:
        raise DataError(f"datasets[{source.name}].uri: {exc}") from None
    if scheme == "s3":
        loaded = _load_s3(uri, source.name)
    else:
        path = Path(local_path(uri))
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = Path(base_dir) / path
        if not path.exists():
            raise DataError(f"datasets[{source.name}].uri: {uri!r} not found (looked at {path})")
        loaded = _load_path(path, source.name)
    loaded.rows_read = len(loaded.records) + len(loaded.bad)
    if source.max_samples is not None and len(loaded.records) > source.max_samples:
        keep = sorted(random.Random(f"{seed}:{source.name}").sample(range(len(loaded.records)), source.max_samples))
        loaded.records = [loaded.records[i] for i in keep]
        log(f"dataset {source.name}: kept {source.max_samples} of {loaded.rows_read} rows (maxSamples)")
    return loaded


def check_bad_rows(source, loaded: LoadedSource, more_bad: list[BadRow], max_fraction: float) -> None:
    """Fail when the share of malformed rows of a source exceeds preprocessing.maxBadRowsFraction."""
    bad = len(loaded.bad) + len(more_bad)
    total = loaded.rows_read
    if total == 0 or bad == 0 or bad / total <= max_fraction:
        return
    examples = "; ".join(str(b) for b in (loaded.bad + more_bad)[:BAD_ROW_EXAMPLES])
    raise DataError(
        f"dataset {source.name} ({loaded.path}): {bad} of {total} rows are malformed "
        f"({bad / total:.1%}), above preprocessing.maxBadRowsFraction={max_fraction:g}. "
        f"First problems: {examples}. Fix the data, or raise maxBadRowsFraction to skip them."
    )


# ----------------------------------------------------------------------------- local


def _load_path(path: Path, name: str) -> LoadedSource:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _load_saved_dataset(path, name)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_TYPES)
        if not files:
            raise DataError(
                f"datasets[{name}].uri: folder {path} holds no {'/'.join(FILE_TYPES)} files "
                "and is not a saved `datasets` folder"
            )
        out = LoadedSource(str(path))
        for f in files:
            part = _load_file(f, name)
            out.records += part.records
            out.bad += part.bad
        return out
    return _load_file(path, name)


def _load_file(path: Path, name: str) -> LoadedSource:
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DataError(
            f"datasets[{name}].uri: {path} has an unsupported type {suffix or '(none)'}; "
            f"use one of {', '.join(FILE_TYPES)} or a saved `datasets` folder"
        )
    try:
        with open(path, "rb") as fh:
            return _parse(fh, str(path), suffix, name)
    except OSError as exc:
        raise DataError(f"datasets[{name}].uri: cannot read {path}: {exc.strerror or exc}") from None


def _load_saved_dataset(path: Path, name: str) -> LoadedSource:
    try:
        import datasets
    except ImportError:  # pragma: no cover - the trainer extra installs it
        raise DataError(f"datasets[{name}].uri: {path} is a saved `datasets` folder; install the `datasets` package") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for corrupt folders
        raise DataError(f"datasets[{name}].uri: cannot load the saved dataset at {path}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(
                f"datasets[{name}].uri: {path} is a DatasetDict without a 'train' split "
                f"(splits: {', '.join(loaded)}); point the uri at one split's folder"
            )
        loaded = loaded["train"]
    out = LoadedSource(str(path))
    for i, row in enumerate(loaded):
        out.records.append((f"{path}: row {i}", dict(row)))
    return out


# ----------------------------------------------------------------------------- s3


def _load_s3(uri: str, name: str) -> LoadedSource:
    if importlib.util.find_spec("s3fs") is None:
        raise DataError(
            f"datasets[{name}].uri: {uri} is on S3, which needs the `s3fs` package "
            "(pip install s3fs) in the trainer image; or copy the data to a PVC and use pvc://"
        )
    import fsspec

    suffix = "." + uri.rsplit(".", 1)[-1].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    if suffix not in FILE_TYPES:
        raise DataError(
            f"datasets[{name}].uri: {uri}: only single {'/'.join(FILE_TYPES)} files are read from S3"
        )
    try:
        with fsspec.open(uri, "rb") as fh:
            return _parse(io.BytesIO(fh.read()), uri, suffix, name)
    except (OSError, PermissionError) as exc:
        raise DataError(f"datasets[{name}].uri: cannot read {uri}: {exc}") from None


# ----------------------------------------------------------------------------- parsers


def _parse(fh, origin: str, suffix: str, name: str) -> LoadedSource:
    if suffix == ".jsonl":
        return _parse_jsonl(fh, origin)
    if suffix == ".json":
        return _parse_json(fh, origin, name)
    if suffix == ".csv":
        return _parse_csv(fh, origin)
    return _parse_parquet(fh, origin, name)


def _parse_jsonl(fh, origin: str) -> LoadedSource:
    out = LoadedSource(origin)
    for lineno, raw in enumerate(fh, start=1):
        where = f"{origin}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.bad.append(BadRow(where, f"not UTF-8 ({exc.reason} at byte {exc.start})"))
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            out.bad.append(BadRow(where, f"invalid JSON: {exc.msg} at column {exc.colno}"))
            continue
        _add_record(out, where, record)
    return out


def _parse_json(fh, origin: str, name: str) -> LoadedSource:
    try:
        data = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f"{origin}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else origin
        raise DataError(f"datasets[{name}]: {where}: not a valid JSON document ({exc}); JSON lines files need the .jsonl suffix") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise DataError(f"datasets[{name}]: {origin}: expected a JSON array of objects, got {type(data).__name__}")
    out = LoadedSource(origin)
    for i, record in enumerate(data):
        _add_record(out, f"{origin}: item {i}", record)
    return out


def _parse_csv(fh, origin: str) -> LoadedSource:
    out = LoadedSource(origin)
    text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return out
    except (UnicodeDecodeError, csv.Error) as exc:
        out.bad.append(BadRow(f"{origin}:1", f"unreadable header: {exc}"))
        return out
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except (UnicodeDecodeError, csv.Error) as exc:
            out.bad.append(BadRow(f"{origin}:{reader.line_num}", f"unreadable CSV row: {exc}"))
            continue
        where = f"{origin}:{reader.line_num}"
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            out.bad.append(BadRow(where, f"expected {len(header)} columns, got {len(cells)}"))
            continue
        out.records.append((where, dict(zip(header, cells))))
    return out


def _parse_parquet(fh, origin: str, name: str) -> LoadedSource:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(fh)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for corrupt files
        raise DataError(f"datasets[{name}]: {origin}: not a readable Parquet file ({exc})") from None
    out = LoadedSource(origin)
    for i, record in enumerate(table.to_pylist()):
        _add_record(out, f"{origin}: row {i}", record)
    return out


def _add_record(out: LoadedSource, where: str, record: Any) -> None:
    if isinstance(record, dict):
        out.records.append((where, record))
    else:
        out.bad.append(BadRow(where, f"expected a JSON object, got {type(record).__name__}"))

