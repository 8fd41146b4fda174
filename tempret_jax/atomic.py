"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Every file the package writes goes through here (logs that only grow, through `append_jsonl`). The new content is written to a uniquely
named temporary file in the target's own directory (so the final rename stays on one file
system and is atomic, and two processes writing the same target do not share a temporary),
then renamed over the target; on any error the temporary is removed and the target is left as
it was.

    with atomic.path(out / "clip.mp4") as tmp:      # for libraries that want a file name
        encoder.write(tmp)
    with atomic.writer(out / "rows.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    atomic.write_json(out / "metrics.json", record)
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

# mkstemp creates files readable by the owner only; a written file gets the usual mode.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


_PREFIX, _SUFFIX = ".", ".tmp"  # a temporary of "x.json": ".x.json.<8 random characters>.tmp"


def temporaries(folder: str | os.PathLike) -> list[pathlib.Path]:
    """The temporaries `path` left in ``folder`` when its process was killed (sorted).

    Only a process that knows no other writes there may remove them (train holds the workdir
    lock; preparation its output folder).
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(_PREFIX)
                  and p.name.endswith(_SUFFIX) and len(p.name.split(".")) >= 4)


def remove(paths) -> None:
    """Removes each file or folder of ``paths`` (what `temporaries` and other leftovers finders
    return; the caller knows no one is writing them)."""
    for p in paths:
        if pathlib.Path(p).is_dir():
            shutil.rmtree(p)
        else:
            pathlib.Path(p).unlink()


@contextlib.contextmanager
def path(target: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary path beside ``target``; renamed onto ``target`` when the block ends
    without an error, removed otherwise. Creates the parent directory."""
    target = pathlib.Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{_PREFIX}{target.name}.",
                               suffix=_SUFFIX)
    os.close(fd)
    tmp = pathlib.Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def writer(target: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(target, mode, **kwargs)`` with the atomic replacement of `path`; text modes
    default to UTF-8."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with path(target) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with writer(target, "wb") as f:
        f.write(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    with writer(target, "w") as f:
        f.write(text)


def write_json(target: str | os.PathLike, value: Any, indent: int | None = 2) -> None:
    write_text(target, json.dumps(value, indent=indent))


def append_jsonl(target: str | os.PathLike, record: Any) -> None:
    """Appends ``record`` as one JSON line: a single write in append mode (O_APPEND), so a
    reader or a crash sees whole lines only (logs grow; they are never rewritten)."""
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
