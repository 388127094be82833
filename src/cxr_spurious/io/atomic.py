"""Write files and folders atomically: to a temporary path first, then rename.

A crash or an error mid-write never leaves a half-written file at the final path. The
result has the permissions a plain ``open(path, "w")`` / ``mkdir`` would give it: a new
file ``0o666 & ~umask``, a new folder ``0o777 & ~umask``, a replaced file keeps its mode
(``tempfile`` alone would leave them owner-only, ``0o600`` / ``0o700``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
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


def destination(final: str | os.PathLike[str]) -> Path:
    """``final``, or where it links to when it is a symbolic link.

    Renaming onto a link would replace the link itself: the new content would land next to
    the link (often on another disk than the data it pointed at) and the link's target
    would keep the old content.
    """
    final = Path(final)
    return final.resolve() if final.is_symlink() else final


def _remove_tree(path: Path) -> None:
    """Remove a folder, or only the link when ``path`` is a symbolic link (never its target),
    or the file when a file stood where the folder goes (an ``atomic_dir`` swap moves it
    aside like a folder)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


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
        final: Destination file path. A symbolic link is followed: its target is written
            and the link stays.
        suffix: Suffix for the temporary file (some writers infer the format from it).

    Yields:
        The temporary path to write to. It is removed if the block raises.
    """
    final = destination(final)
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


# Old folders this process is swapping out right now (``atomic_dir``), never stale.
_SWAPPING: set[str] = set()
_SWAPPING_LOCK = threading.Lock()
# What follows ``.old.`` in an old folder's name: ``<pid>.<random hex>`` (``<pid>`` before).
_OLD_SUFFIX = re.compile(r"(\d+)(?:\.[0-9a-f]+)?")


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    with contextlib.suppress(OSError, IndexError):
        status = Path(f"/proc/{pid}/stat").read_text()
        return status.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def old_folder_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid in an ``atomic_dir`` old-folder name ``.<name>.old.<pid>[.<suffix>]``."""
    name = Path(path).name
    if ".old." not in name:
        return None
    match = _OLD_SUFFIX.fullmatch(name.rsplit(".old.", 1)[1])
    return int(match.group(1)) if match else None


def stale_old_reason(path: str | os.PathLike[str]) -> str | None:
    """Why an ``atomic_dir`` old folder is a leftover, or None while its swap may be running.

    The old folder only lives between ``atomic_dir``'s two renames and the removal after
    them: it is a leftover when the process in its name no longer runs, or when that is this
    process and none of its swaps holds it (a container entrypoint reuses its pid each run).
    """
    path = Path(path)
    pid = old_folder_pid(path)
    if pid is None:
        return None
    if pid == os.getpid():
        with _SWAPPING_LOCK:
            busy = str(path) in _SWAPPING
        return None if busy else "left by an earlier process with this pid"
    if not _pid_running(pid):
        return f"its process {pid} no longer runs"
    return None


def remove_stale_old_folders(final: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.<name>.old.*`` leftovers of interrupted ``atomic_dir`` swaps of ``final``."""
    final = Path(final)
    removed = []
    for path in sorted(final.parent.glob(f".{glob.escape(final.name)}.old.*")):
        try:
            if stale_old_reason(path) is None:
                continue
        except OSError:
            continue
        _remove_tree(path)  # a link (an old swap moved one aside) goes, its target stays
        if not os.path.lexists(path):
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; swap it in place of ``final`` on success.

    The swap is two renames (``final`` -> ``.<name>.old.<pid>.<random>``, the new folder ->
    ``final``); an exception between them (Ctrl-C, a failing rename) puts the old folder
    back, so ``final`` is never lost. Old folders that interrupted swaps left behind (their
    process no longer runs) are removed.

    Args:
        final: Destination folder. An existing folder there is replaced only once the new
            one is complete. A symbolic link is followed: the folder it points to is
            replaced (next to it, on its disk) and the link stays.

    Yields:
        The temporary folder to fill. It is removed if the block raises.
    """
    final = destination(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_old_folders(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp.", dir=final.parent))
    old: Path | None = None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes the folder 0o700
        if final.exists():
            # A unique name: a leftover of an earlier process with this pid cannot block it.
            old = final.with_name(f".{final.name}.old.{os.getpid()}.{secrets.token_hex(4)}")
            with _SWAPPING_LOCK:
                _SWAPPING.add(str(old))
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        if old is not None and os.path.lexists(old) and not os.path.lexists(final):
            with contextlib.suppress(OSError):
                os.replace(old, final)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            with _SWAPPING_LOCK:
                _SWAPPING.discard(str(old))
    if old is not None:
        _remove_tree(old)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
