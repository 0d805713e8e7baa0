"""Reading user json with clear errors, and atomic writes that never touch the inputs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from comining.errors import CominingError, InputError


def read_json(path: str | os.PathLike) -> Any:
    """Parse a json file; any failure becomes an InputError naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a json file")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed json: {exc.msg} at line {exc.lineno} "
                               f"column {exc.colno}") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    a, b = Path(a), Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrite(out: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Raise InputError when `out` is one of the inputs (by path or by inode)."""
    for src in inputs:
        if src is None:
            continue
        if Path(out).resolve() == Path(src).resolve() or same_file(out, src):
            raise InputError(out, f"refusing to overwrite the input file {src}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(path, f"output folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CominingError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    """Deterministic json (sorted keys off: field order is the user's) written atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
