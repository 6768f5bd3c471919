"""Errors a user can act on: the CLI prints them as one line and exits 2 (``--debug`` shows the traceback)."""

from __future__ import annotations

import errno
import re


class PrefoptError(Exception):
    """A problem with the user's input or environment, worded for the user."""


# errno -> what it means for a run; raised as OSError, or inside the message of a library's own error
# (safetensors: "I/O error: No space left on device (os error 28)", torch.save: "file write failed")
DISK = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
        errno.EFBIG: "a file is over the size limit", errno.EROFS: "the file system is read-only"}
PATH = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM}  # an output path that cannot be made
_OS_ERROR = re.compile(r"os error (\d+)|\[Errno (\d+)\]|No space left on device|file write failed")


def disk_fault(e: BaseException) -> str | None:
    """One line for an error that comes from a full, quota-limited or read-only disk, or from a path that cannot
    be created or written (anywhere in the chain of causes); None for any other error, which keeps its
    traceback."""
    while e is not None:
        code = e.errno if isinstance(e, OSError) else None
        if code is None:
            m = _OS_ERROR.search(str(e))
            code = int(m.group(1) or m.group(2)) if m and (m.group(1) or m.group(2)) else errno.ENOSPC if m else None
        if code in DISK:
            where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
            return (f"{DISK[code]} ({type(e).__name__}: {str(e).strip().splitlines()[-1][:160]}){where}; the run "
                    "stopped and is not marked complete: free space and rerun (sft/dpo: with --resume)")
        if code in PATH and isinstance(e, OSError) and e.filename:
            return f"{e.filename}: {e.strerror}; choose an output path prefopt can create and write to"
        e = e.__cause__ or e.__context__
    return None
