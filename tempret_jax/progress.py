"""Progress bars: one on process 0, with rate and ETA, silent when stderr is not a terminal
(logs, CI, notebooks' captured output stay clean)."""

from __future__ import annotations

import jax
import tqdm


def bar(total: int | None = None, desc: str = "", unit: str = "it") -> tqdm.tqdm:
    """A tqdm bar for a loop of ``total`` units (None: rate only); update it with `.update(n)`
    and close it (or use it as a context manager)."""
    return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                     disable=True if jax.process_index() else None)  # None: off if no TTY
