"""Reading user json with clear errors, and atomic writes that never touch the inputs."""

from __future__ import annotations

import json
import os
import secrets
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


def _anonymous_file(parent: Path) -> int | None:
    """An unnamed file in `parent` (Linux O_TMPFILE): a process killed while writing it
    leaves nothing behind. None where the OS or filesystem cannot make one."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(parent, flag | os.O_WRONLY, 0o666)
    except OSError:  # EOPNOTSUPP, EISDIR (old kernels), ...: fall back to a named file
        return None


def _link_fd(fd: int, target: Path) -> None:
    """Name the O_TMPFILE file `fd` (linkat through /proc, which needs no privilege;
    a dir fd makes Python call linkat with AT_SYMLINK_FOLLOW rather than link)."""
    proc = os.open("/proc/self/fd", os.O_RDONLY)
    try:
        os.link(str(fd), target, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _temp_name(parent: Path, name: str) -> Path:
    return parent / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _write_temp(path: Path, data: bytes) -> tuple[int, Path | None]:
    """`data` in a complete, fsynced temporary file beside `path`: (its open fd, its name;
    None while it is an unnamed O_TMPFILE file)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(path, f"output folder {parent} does not exist")
    tmp = None
    fd = _anonymous_file(parent)
    try:
        if fd is None:
            tmp = _temp_name(parent, path.name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
        os.fsync(fd)
        return fd, tmp
    except BaseException:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_many(files: list[tuple[str | os.PathLike, bytes]]) -> None:
    """Write each (path, data): every file is first written completely (and fsynced) to
    a temporary file beside its path; only when all are, they are renamed into place, in
    order (put the main output last). Readers see old files or new ones, never a partial
    one; a failure (a full disk) leaves the old files as they were. The temporary files
    stay unnamed until that final step where Linux allows (O_TMPFILE), so a kill -9
    leaves no stray file either. New files get the usual permissions (0666 less the
    umask), not mkstemp's 0600."""
    temps: list[tuple[int, Path | None, Path]] = []   # (fd, temporary name, target)
    current = None
    try:
        for path, data in files:
            current = Path(path)
            fd, tmp = _write_temp(current, data)
            temps.append((fd, tmp, current))
        for k, (fd, tmp, path) in enumerate(temps):
            current = path
            if tmp is None:   # name the complete unnamed file, then move it into place
                tmp = _temp_name(path.parent if str(path.parent) else Path("."), path.name)
                _link_fd(fd, tmp)
                temps[k] = (fd, tmp, path)
            os.replace(tmp, path)
            temps[k] = (fd, None, path)
    except OSError as exc:
        raise CominingError(f"{current}: cannot write: {exc.strerror or exc}") from None
    finally:
        for fd, tmp, _ in temps:
            os.close(fd)
            if tmp is not None:
                _unlink_quietly(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write one file atomically (see atomic_write_many)."""
    atomic_write_many([(path, data)])


def json_bytes(obj: Any, *, indent: int | None = None) -> bytes:
    """Deterministic json (sorted keys off: field order is the user's), UTF-8, a final newline."""
    return (json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    """Deterministic json (sorted keys off: field order is the user's) written atomically."""
    atomic_write_bytes(path, json_bytes(obj, indent=indent))
