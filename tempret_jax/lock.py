"""One trainer per workdir: an exclusive lock on ``<workdir>/.lock``, held while training.

The lock is `fcntl.flock` on the open file, so the kernel drops it when its holder exits or is
killed (-9 included): a lock file left by a dead holder is stale by construction and the next
trainer takes it, saying whose it was. The file names the holder (host, pid, start time) for
the error the second trainer gets. Re-entrant within a process (main holds it around data
generation and training, and the loop takes it again). Multi-process jobs: process 0 holds it.
flock works on local disks and most network file systems (NFS v4 maps it to POSIX locks); on
one that does not support it, taking the lock fails with the system's error.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket

import jax

LOCK_FILE = ".lock"
_held: dict[pathlib.Path, list] = {}  # lock path -> [open file, depth], this process's


class WorkdirBusyError(RuntimeError):
    """Another live process trains in this workdir."""


class WorkdirLock:
    """Context manager: holds ``<workdir>/.lock`` exclusively or raises WorkdirBusyError."""

    def __init__(self, workdir, say=print):
        self.path = pathlib.Path(workdir).absolute() / LOCK_FILE
        self.say = say
        self.active = jax.process_index() == 0

    def __enter__(self) -> WorkdirLock:
        if not self.active:
            return self
        if self.path in _held:
            _held[self.path][1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115  held open for as long as the lock is
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(f)
            f.close()
            raise WorkdirBusyError(
                f"{self.path.parent} is in use by another trainer ({holder}; lock file "
                f"{self.path}): wait for it to finish or use another --workdir") from None
        previous = _holder(f)
        if previous != "unknown holder":
            self.say(f"workdir lock: taking over from {previous}, which is no longer running")
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "since": datetime.datetime.now().isoformat(timespec="seconds")}))
        f.flush()
        _held[self.path] = [f, 1]
        return self

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        entry = _held[self.path]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.path]
            # Empty first: a holder that exited cleanly leaves nothing to "take over" from.
            entry[0].truncate(0)
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            entry[0].close()


def holder(workdir) -> str | None:
    """Who holds ``workdir``'s lock ("pid P on H since T"), or None if no live process does.
    A probe: it never takes the lock for long (a fresh open file, so even this process's own
    hold shows)."""
    path = pathlib.Path(workdir).absolute() / LOCK_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(f)
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _holder(f) -> str:
    f.seek(0)
    try:
        h = json.loads(f.read() or "null")
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "unknown holder"
