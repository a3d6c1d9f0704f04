"""One thread per process that writes what it is given a few at a time.

The checks that waited for their host end one by one, on the process's
download threads (``worker.hosts``); writing each row in a transaction of
its own, with its own look for finished datasets, would cost more than the
check. ``Recorder.add`` hands the work to the process's recorder thread,
which gives it, with what came meanwhile, to its ``write`` function
(``worker.batch``) in one go: WAIT seconds after an urgent item (a priority
check: an edit's row is awaited), else after up to LINGER seconds or once
MANY items are in (a host's bulk backlog ends a check every few tens of
milliseconds: one transaction for each would cost more than its check). What it holds counts as the
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
    WAIT = 0.05  # seconds the thread waits for a few more after an urgent item
    LINGER = 0.5  # ... after the first of non-urgent ones
    MANY = 50  # items written at once without waiting longer

    def __init__(self, write: Callable[[list[Any]], None]):
        self.write = write
        self.changed = threading.Condition()
        self.items: list[Any] = []
        self.urgent = False

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

    def add(self, item: Any, urgent: bool = False) -> None:
        pool.late_started()
        with self.changed:
            self.items.append(item)
            self.urgent = self.urgent or urgent
            self.changed.notify()

    def _loop(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.items)
                first = time.monotonic()
                # let a few more come: not long for an urgent one
                while len(self.items) < self.MANY:
                    left = first + (self.WAIT if self.urgent else self.LINGER) - time.monotonic()
                    if left <= 0:
                        break
                    self.changed.wait(left)
                items, self.items, self.urgent = self.items, [], False
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
