"""Worker processes that end with the process that started them.

Grain's `mp_prefetch` workers (and a process pool's) are separate processes: when the trainer
is killed (-9, out of memory, a lost session) nothing tells them, and they keep decoding for
nobody, holding memory and cores. `tie_to_parent` runs in each worker as it starts (Grain's
``worker_init_fn``, a pool's ``initializer``): a daemon thread waits on the parent's sentinel,
which the kernel makes readable when the parent dies, and ends the worker at once.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading


def tie_to_parent(*_) -> None:
    """Ends this process as soon as its parent dies (arguments ignored: worker index, count)."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child
        return

    def watch():
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)  # no clean-up to run: the consumer of our results is gone

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
