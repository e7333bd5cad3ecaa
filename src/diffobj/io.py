"""Atomic output: a file is either complete or absent, never half-written. And the one reader
of the YAML files (``read_yaml``): a bad file is a UserError naming it, and its line and column."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from diffobj.errors import UserError, yaml_error_line


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_csv(
    path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> None:
    """Rows of plain values as CSV (compute jobs write CSV so a GPU node needs no polars)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _plain(row[k]) for k in columns})


def csv_line(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    """One row as the line ``write_csv`` writes for it (newline included)."""
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=list(columns)).writerow({k: _plain(row[k]) for k in columns})
    return buffer.getvalue()


def append_line(path: str | Path, line: str) -> None:
    """Append one line with a single write on an O_APPEND descriptor: a reader, or the file
    after a crash, holds whole lines only (a kill cannot split one write of a regular file)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_json_if_present(path: str | Path) -> dict:
    """A JSON file's object, {} when the file does not exist (a metric a run did not make)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def read_yaml(path: str | Path, what: str, error: type[UserError] = UserError) -> Any:
    """The YAML document in ``path``. ``error`` (UserError or a subclass of it) when the file
    is absent (``FILE: WHAT not found``) or is not valid YAML (``FILE:LINE:COLUMN: not valid
    YAML: ...``, ``diffobj.errors.yaml_error_line``)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except yaml.YAMLError as err:
        raise error(yaml_error_line(path, err)) from None


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
