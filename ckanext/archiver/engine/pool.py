"""The process's download threads, and batches that do not wait for their
slowest downloads.

A bulk batch runs its downloads side by side. Waiting for all of them
would make every batch as slow as its slowest one: with 5% of hosts
hanging, nine batches of fifty in ten hold a hanging download that only
``read_timeout`` ends. So ``run_batch`` can hand the stragglers off: once
the batch is mostly done (``TAIL_SHARE`` of it) and has waited half as long
again, or once ``wait_max`` seconds have passed, it returns what is done and
leaves the rest running on their threads; each of them calls ``on_late``
there when it ends. A process keeps at most ``LATE_MAX`` of them: a batch
that would go over waits (back-pressure), so a flood of hanging hosts slows
a worker down instead of growing it.

No CKAN imports: the caller says what to run and what to do late.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

POOL_SIZE = 256  # download threads of one process: batches plus stragglers
LATE_MAX = 192  # stragglers one process keeps downloading in the background
TAIL_SHARE = 0.9  # a batch this much done ...
TAIL_GRACE = 0.5  # ... waits this share of its time so far again, then hands off


@dataclasses.dataclass
class _State:
    executor: ThreadPoolExecutor
    late_changed: threading.Condition
    late: int = 0


_states: dict[int, _State] = {}
_states_lock = threading.Lock()


def _state() -> _State:
    """This process's threads (a forked worker child makes its own: a pool
    and a lock are not usable across fork)."""
    pid = os.getpid()
    state = _states.get(pid)
    if state is None:
        with _states_lock:
            state = _states.get(pid)
            if state is None:
                state = _states[pid] = _State(
                    ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="archiver-fetch"),
                    threading.Condition())
    return state


def late_count() -> int:
    """Downloads of this process handed off by their batch (or started
    later, ``engine.timer``) and still running."""
    return _state().late


def submit(fn: Callable[..., None], *args) -> None:
    """Run ``fn(*args)`` on one of the process's download threads."""
    _state().executor.submit(fn, *args)


def late_started() -> None:
    """Count work started outside a batch (``drain`` waits for it)."""
    state = _state()
    with state.late_changed:
        state.late += 1


def late_done() -> None:
    state = _state()
    with state.late_changed:
        state.late -= 1
        state.late_changed.notify_all()


def run_batch(items: list[T], work: Callable[[T], None],
              on_late: Optional[Callable[[T], None]] = None,
              wait_max: Optional[float] = None) -> tuple[list[T], list[T]]:
    """Run ``work(item)`` for every item, side by side; return ``(done,
    late)``.

    Without ``wait_max`` (or without ``on_late``) it waits for every item.
    With it, it returns once every item is done, or once ``TAIL_SHARE`` of
    them are and it has waited ``TAIL_GRACE`` times as long again, or after
    ``wait_max`` seconds; the items still running then are ``late``: each
    calls ``on_late(item)`` on its own thread when ``work`` ends. ``work``
    and ``on_late`` should not raise (what they raise is logged).
    """
    if not items:
        return [], []
    state = _state()
    if on_late is None:
        wait_max = None
    changed = threading.Condition()
    finished: list[T] = []
    handed_off = [False]

    def run(item: T) -> None:
        try:
            work(item)
        except Exception:
            log.exception("A download thread failed")
        with changed:
            if not handed_off[0]:
                finished.append(item)
                changed.notify_all()
                return
        try:
            on_late(item)
        except Exception:
            log.exception("Recording a late download failed")
        finally:
            with state.late_changed:
                state.late -= 1
                state.late_changed.notify_all()

    started = time.monotonic()
    for item in items:
        state.executor.submit(run, item)
    mostly = math.ceil(TAIL_SHARE * len(items))
    with changed:
        mostly_at = None
        while len(finished) < len(items):
            if wait_max is None:
                changed.wait()
                continue
            now = time.monotonic()
            if mostly_at is None and len(finished) >= mostly:
                mostly_at = now
            deadline = started + wait_max
            if mostly_at is not None:
                deadline = min(deadline, mostly_at + TAIL_GRACE * (mostly_at - started))
            if now >= deadline:
                break
            changed.wait(deadline - now)
        handed_off[0] = True
        done_ids = {id(item) for item in finished}
        done = list(finished)
        late = [item for item in items if id(item) not in done_ids]
        if late:
            with state.late_changed:
                state.late += len(late)
    if late:
        with state.late_changed:  # back-pressure
            state.late_changed.wait_for(lambda: state.late <= LATE_MAX)
    return done, late


def drain(timeout: float) -> int:
    """Wait up to ``timeout`` seconds for this process's late downloads to
    end (a worker process about to exit); return how many still run."""
    state = _state()
    with state.late_changed:
        state.late_changed.wait_for(lambda: state.late <= 0, timeout=timeout)
        return state.late
