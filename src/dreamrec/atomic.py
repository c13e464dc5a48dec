"""Atomic writes with ordinary permissions, and the clean-up of temporaries that killed writes leave.

A file or folder is written under a hidden temporary name beside its target and then renamed over it
(``os.replace``), so a reader sees the old or the new version, never a half-written one.

* Permissions: files and folders get the mode ``open()`` and ``mkdir()`` give them (0666 and 0777 less the
  umask), not 0600/0700 as ``tempfile.mkstemp``/``mkdtemp`` (or safetensors' ``save_file``) would, so that
  another account (a service serving a run) can read what dreamrec wrote wherever the umask lets it.
* Names: ``.<target>.<host>-<pid>-<random>.dreamrec-tmp``, with ``<host>`` a short hash of the host name.
* Clean-up: a process killed mid-write (SIGKILL, power loss) leaves its temporary behind. Every atomic
  write removes, in the folder it writes into, the temporaries of dreamrec's naming that are stale: made
  by a process of this host that no longer runs, or older than :data:`STALE_AFTER_S` (a process of
  another host sharing the folder). Nothing else is ever removed.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".dreamrec-tmp"
STALE_AFTER_S = 3600.0  # a temporary untouched this long is stale whichever host made it
_TMP_NAME = re.compile(r"^\..+\.([0-9a-f]{8})-([0-9]+)-[0-9a-f]+" + re.escape(TMP_SUFFIX) + r"$")


def umask() -> int:
    """The process's umask (read from /proc where it can be, else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: str | Path) -> None:
    """Set a file's mode to what ``open()`` would have created it with (0666 less the umask)."""
    os.chmod(path, 0o666 & ~umask())


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the name of one of dreamrec's atomic-write temporaries."""
    return _TMP_NAME.match(name) is not None


def temp_path(target: Path) -> Path:
    """A fresh temporary name for ``target``, in ``target``'s folder."""
    return target.with_name(f".{target.name}.{_host()}-{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary of dreamrec's naming whose writer is gone (see the module docstring)."""
    m = _TMP_NAME.match(path.name)
    if m is None:
        return False
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_AFTER_S:
        return True
    pid = int(m.group(2))
    return m.group(1) == _host() and pid != os.getpid() and not _pid_running(pid)


def clean_stale(folder: Path) -> list[Path]:
    """Remove the stale temporaries of dreamrec's naming in ``folder``; returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for p in entries:
        if is_stale(p):
            remove(p)
            removed.append(p)
    return removed


def remove(path: Path) -> None:
    """Delete a file or a folder tree (already gone: nothing to do)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Create an empty temporary file beside ``path``, call ``write(tmp)`` to fill it, rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    tmp = temp_path(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        give_default_mode(tmp)  # some writers (safetensors) make their file 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (``fsync``: flushed to the disk before the rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    return atomic_write(path, write)


def make_temp_dir(target: Path) -> Path:
    """A new empty temporary folder beside ``target`` (to fill, then :func:`replace_dir` into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target.parent)
    tmp = temp_path(target)
    tmp.mkdir()
    return tmp


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the folder ``tmp`` at ``target``, replacing the folder there (deleted after the swap)."""
    if target.exists():
        old = temp_path(target)
        os.replace(target, old)
        os.replace(tmp, target)
        remove(old)
    else:
        os.replace(tmp, target)
