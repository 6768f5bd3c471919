"""Run-dir integrity: one prefopt process per output dir (an OS lock), and digests that tell whether an input
changed since a run or checkpoint used it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prefopt.data import main_process
from prefopt.errors import PrefoptError


def digest(path: str | Path) -> str:
    """sha1 of a file's bytes, or of a folder's files (their relative names and bytes): has an input changed?"""
    path, h = Path(path), hashlib.sha1()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


LOCK_FILE = ".prefopt.lock"
LOCK_ENV = "PREFOPT_LOCKED"  # the lock the launching process holds, for the ranks it starts
_held: dict[str, object] = {}  # lock files this process holds, open until it exits


def lock_output_dir(output_dir: str | Path) -> None:
    """Hold OUTPUT_DIR/.prefopt.lock until this process exits: a second prefopt process on the same dir gets a
    one-line error naming the holder. Re-entrant within a process; the ranks of a launcher share its lock."""
    import fcntl
    import socket

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = str((out / LOCK_FILE).resolve())
    if path in _held or os.environ.get(LOCK_ENV) == path or not main_process():
        return
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise PrefoptError(f"--output-dir {output_dir}: in use by another prefopt run ({holder}); wait for it to end "
                           "or choose another --output-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    _held[path] = f
    os.environ[LOCK_ENV] = path
