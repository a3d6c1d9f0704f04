"""Work that starts later, without a thread waiting for it.

``call_later(seconds, fn)`` keeps ``fn`` in a heap; one thread per
process (a forked worker child makes its own) hands it to the process's
download threads (``pool.submit``) when it is due. ``every(seconds, fn)``
runs ``fn`` on that thread periodically (the per-host waiting lists'
``pump``). Calls still waiting or running count as the process's late
work (``pool.late_count``), so a worker process about to exit lets them
end (``pool.drain``).

No CKAN imports.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import threading
import time
from typing import Callable

from ckanext.archiver.engine import pool

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Timer:
    changed: threading.Condition = dataclasses.field(default_factory=threading.Condition)
    heap: list = dataclasses.field(default_factory=list)
    periodic: dict = dataclasses.field(default_factory=dict)  # name -> [every, due, fn]
    seq: itertools.count = dataclasses.field(default_factory=itertools.count)
    thread: threading.Thread | None = None


_timers: dict[int, _Timer] = {}
_lock = threading.Lock()


def _timer() -> _Timer:
    pid = os.getpid()
    timer = _timers.get(pid)
    if timer is None:
        with _lock:
            timer = _timers.get(pid)
            if timer is None:
                timer = _timers[pid] = _Timer()
                timer.thread = threading.Thread(target=_loop, args=(timer,),
                                                name="archiver-timer", daemon=True)
                timer.thread.start()
    return timer


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("Work started later failed")
    finally:
        pool.late_done()


def _loop(timer: _Timer) -> None:
    while True:
        due_now = []
        with timer.changed:
            now = time.monotonic()
            while timer.heap and timer.heap[0][0] <= now:
                due_now.append(heapq.heappop(timer.heap)[2])
            periodic = [p for p in timer.periodic.values() if p[1] <= now]
            for p in periodic:
                p[1] = now + p[0]
            if not due_now and not periodic:
                nexts = [t[0] for t in timer.heap[:1]] + [p[1] for p in timer.periodic.values()]
                timer.changed.wait(min(nexts) - now if nexts else None)
                continue
        for fn in due_now:
            pool.submit(_run, fn)
        for p in periodic:
            try:
                p[2]()
            except Exception:
                log.exception("Periodic work failed")


def call_later(seconds: float, fn: Callable[[], None]) -> None:
    """Run ``fn()`` on a download thread ``seconds`` from now (at once when
    ``seconds`` <= 0)."""
    pool.late_started()
    if seconds <= 0:
        pool.submit(_run, fn)
        return
    timer = _timer()
    with timer.changed:
        heapq.heappush(timer.heap, (time.monotonic() + seconds, next(timer.seq), fn))
        timer.changed.notify()


def every(name: str, seconds: float, fn: Callable[[], None]) -> None:
    """Run ``fn()`` every ``seconds`` on the timer's thread (once per
    ``name`` and process; calling again changes nothing)."""
    timer = _timer()
    with timer.changed:
        if name not in timer.periodic:
            timer.periodic[name] = [seconds, time.monotonic() + seconds, fn]
            timer.changed.notify()


def waiting() -> int:
    """Calls of this process not due yet."""
    timer = _timers.get(os.getpid())
    return len(timer.heap) if timer else 0
