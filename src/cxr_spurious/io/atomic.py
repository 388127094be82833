"""Write files and folders atomically: to a temporary path first, then rename.

A crash or an error mid-write never leaves a half-written file at the final path. The
result has the permissions a plain ``open(path, "w")`` / ``mkdir`` would give it: a new
file ``0o666 & ~umask``, a new folder ``0o777 & ~umask``, a replaced file keeps its mode
(``tempfile`` alone would leave them owner-only, ``0o600`` / ``0o700``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from ``/proc`` on Linux, else set-and-restore under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _normal_mode(final: Path, *, base: int) -> int:
    """Mode a plain write would give ``final``: an existing file's own, else ``base & ~umask``."""
    try:
        return stat.S_IMODE(final.stat().st_mode)
    except OSError:
        return base & ~current_umask()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path next to ``final``; rename it onto ``final`` on success.

    Args:
        final: Destination file path.
        suffix: Suffix for the temporary file (some writers infer the format from it).

    Yields:
        The temporary path to write to. It is removed if the block raises.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=suffix or final.suffix, dir=final.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0o600; a writer may also have replaced it with its own.
        os.chmod(tmp_path, _normal_mode(final, base=0o666))
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; swap it in place of ``final`` on success.

    Args:
        final: Destination folder. An existing folder there is replaced only once the new
            one is complete.

    Yields:
        The temporary folder to fill. It is removed if the block raises.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp.", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes the folder 0o700
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
