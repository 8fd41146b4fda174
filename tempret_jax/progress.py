"""Progress bars: one on process 0, with rate and ETA, silent when stderr is not a terminal
(logs, CI, notebooks' captured output stay clean)."""

from __future__ import annotations

import os

import jax
import tqdm


def bar(total: int | None = None, desc: str = "", unit: str = "it") -> tqdm.tqdm:
    """A tqdm bar for a loop of ``total`` units (None: rate only); update it with `.update(n)`
    and close it (or use it as a context manager). unit 'B' shows kB, MB, GB."""
    return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                     unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                     disable=True if jax.process_index() else None)  # None: off if no TTY


class Reading:
    """A binary file whose reads advance a bar of its size in bytes (a checkpoint being
    loaded: torch.load reads through it). Use as a context manager; closes the file."""

    def __init__(self, path, desc: str):
        self._file = open(path, "rb")  # noqa: SIM115  closed by __exit__
        self._bar = bar(os.fstat(self._file.fileno()).st_size, desc, unit="B")

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._bar.update(len(data))
        return data

    def readinto(self, buffer) -> int:
        n = self._file.readinto(buffer)
        self._bar.update(n or 0)
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def __enter__(self) -> Reading:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
        self._file.close()
