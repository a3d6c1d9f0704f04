"""The report's exports: rows streamed as CSV or JSON while the query
runs, with spreadsheet formulas defused."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Callable, Iterable, Iterator

from ckan import model
from flask import Response, stream_with_context

from ckanext.archiver.views.common import content_disposition

__all__ = ["stream", "csv_cell"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """Spreadsheet programs run cells that start like a formula: defuse
    text from publishers (names, reasons) with a leading quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if value is None:
        return ""
    return value


def stream(fmt: str, basename: str, columns: list[str],
            records: Callable[[], Iterable[dict[str, Any]]],
            meta: dict[str, Any]) -> Response:
    """A streamed CSV or JSON response. ``records`` is called inside the
    response's generator: the query runs while the body is sent, one
    server-side cursor batch at a time."""

    def csv_body() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        try:
            for n, record in enumerate(records(), 1):
                writer.writerow([csv_cell(record.get(c)) for c in columns])
                if n % 200 == 0:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue()
        finally:
            model.Session.remove()

    def json_body() -> Iterator[str]:
        head = json.dumps(meta)[:-1]
        yield (head + ", " if meta else "{") + '"rows": ['
        try:
            for n, record in enumerate(records()):
                yield ("," if n else "") + "\n" + json.dumps(record)
        finally:
            model.Session.remove()
        yield "\n]}\n"

    if fmt == "csv":
        body, content_type = csv_body(), "text/csv; charset=utf-8"
    else:
        body, content_type = json_body(), "application/json"
    # content_type, not mimetype: Flask would add a second charset
    response = Response(stream_with_context(body), content_type=content_type)
    if fmt == "csv":
        response.headers["Content-Disposition"] = content_disposition(
            f"{basename}.csv")
    return response
