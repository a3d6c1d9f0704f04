"""The wall-clock deadline of an attempt and the one watchdog thread per
process that enforces it. No CKAN imports."""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from typing import Any, Optional


class _Watchdog:
    """One daemon thread per process calling ``Deadline.fire`` when a
    deadline passes (cheaper than a timer thread per attempt)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:  # also in a forked child: no thread there yet
        self._cond = threading.Condition()
        self._heap: list = []
        self._stopped = 0
        self._seq = itertools.count()
        self._running = False

    def arm(self, deadline: Deadline) -> None:
        with self._cond:
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="fetch-watchdog", daemon=True).start()
            if self._stopped > 64 and 2 * self._stopped > len(self._heap):  # drop finished ones
                for entry in self._heap:
                    entry[2].queued = not entry[2].stopped
                self._heap = [entry for entry in self._heap if entry[2].queued]
                heapq.heapify(self._heap)
                self._stopped = 0
            deadline.queued = True
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            self._cond.notify()

    def disarm(self, deadline: Deadline) -> None:
        with self._cond:
            if deadline.queued:
                self._stopped += 1

    def _loop(self) -> None:
        cond = self._cond
        with cond:
            while cond is self._cond:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].stopped):
                    deadline = heapq.heappop(self._heap)[2]
                    deadline.queued = False
                    if deadline.stopped:
                        self._stopped = max(self._stopped - 1, 0)
                    else:
                        deadline.fire()
                cond.wait(self._heap[0][0] - now if self._heap else None)


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog._reset)


class Deadline:
    """Wall-clock limit for the whole attempt. When time is up the watchdog
    shuts down the socket in use, which unblocks a read stuck on a server
    that drips bytes (or header lines) just under the read timeout."""

    def __init__(self, seconds: Optional[float]):
        self.seconds = seconds or 0
        self.at = time.monotonic() + self.seconds if self.seconds else None
        self.expired = False
        self.stopped = False
        self.queued = False  # in the watchdog's heap (guarded by the watchdog's lock)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._sock: Optional[socket.socket] = None
        if self.at is not None:
            _watchdog.arm(self)

    def remaining(self) -> Optional[float]:
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            self.expired = True
        return left

    def observe(self, conn: Any, sock: Optional[socket.socket]) -> None:
        """Remember the connection in use (``observe(None, None)`` as soon as
        it may go back to the pool, where another attempt could pick it up)."""
        with self._lock:
            self._conn, self._sock = conn, sock

    def fire(self) -> None:
        with self._lock:
            if self.stopped:
                return
            self.expired = True
            for sock in (getattr(self._conn, "sock", None), self._sock):
                if sock is not None:
                    try:  # the base method: safe on an SSLSocket used by another thread
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
                    except OSError:
                        pass

    def stop(self) -> None:
        with self._lock:
            if self.stopped:
                return
            self.stopped = True
            self._conn = self._sock = None
        if self.at is not None:
            _watchdog.disarm(self)
