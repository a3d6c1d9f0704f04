"""What a download is written into when it does not go to a local temp file.

``fetch(..., sink=factory)`` calls ``factory(filename)`` once the response
headers are in, writes every chunk of the body with ``write(bytes)``, and
calls ``abort()`` when the download is not kept (an error, the size cap, the
same content again). Whoever keeps the outcome calls ``complete()``; until
then nothing is visible in the store. Standard library only.
"""

from __future__ import annotations

from typing import Callable, Protocol

__all__ = ["Sink", "SinkFactory", "StoreError"]


class StoreError(Exception):
    """The archive store refused or failed an operation; ``str()`` is one
    line that says what and why (shown in the resource's reason)."""


class Sink(Protocol):
    key: str
    size: int

    def write(self, data: bytes) -> None: ...

    def abort(self) -> None: ...

    def complete(self) -> None: ...


SinkFactory = Callable[[str], Sink]
