"""One thread per process that writes what it is given a few at a time.

The checks that waited for their host end one by one, on the process's
download threads (``worker.hosts``); writing each row in a transaction of
its own, with its own look for finished datasets, would cost more than the
check. ``Recorder.add`` hands the work to the process's recorder thread,
which waits WAIT seconds for a few more and gives them all at once to its
``write`` function (``worker.batch``). What it holds counts as the
process's late work, so a worker process about to exit lets it end
(``engine.pool.drain``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from ckan import model

from ckanext.archiver.engine import pool

__all__ = ["Recorder"]

log = logging.getLogger(__name__)


class Recorder:
    WAIT = 0.05  # seconds the thread waits for a few more

    def __init__(self, write: Callable[[list[Any]], None]):
        self.write = write
        self.changed = threading.Condition()
        self.items: list[Any] = []

    @classmethod
    def of_process(cls, write: Callable[[list[Any]], None]) -> Recorder:
        """This process's recorder for ``write`` (a forked worker child
        makes its own, with its own thread)."""
        key = (os.getpid(), write)
        recorder = _recorders.get(key)
        if recorder is None:
            with _recorders_lock:
                recorder = _recorders.get(key)
                if recorder is None:
                    recorder = _recorders[key] = cls(write)
                    threading.Thread(target=recorder._loop, name="archiver-recorder",
                                     daemon=True).start()
        return recorder

    def add(self, item: Any) -> None:
        pool.late_started()
        with self.changed:
            self.items.append(item)
            self.changed.notify()

    def _loop(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.items)
            time.sleep(self.WAIT)  # let a few more come
            with self.changed:
                items, self.items = self.items, []
            try:
                self.write(items)
            except Exception:
                log.exception("Recording %d checks failed", len(items))
            finally:
                model.Session.remove()
                for _ in items:
                    pool.late_done()


_recorders: dict[tuple, Recorder] = {}
_recorders_lock = threading.Lock()
