"""The demo's sample web server: a small publisher's site with a realistic
mix of links for the archiver to check.

Every file is generated when asked for (nothing is stored on disk). Run on
its own with ``python scripts/demo/sample_server.py [--port N]``; the demo
(``scripts/demo.py``) starts it in a thread on a free port of 127.0.0.1.

=================================  ==================================================
path                               behaviour
=================================  ==================================================
``/``                              an index of these links (HTML)
``/data/spending-2024.csv``        CSV with Last-Modified (answers 304 when unchanged)
``/data/budget-2025.csv``          CSV with an ETag (answers 304 to If-None-Match)
``/api/bus-stops.json``            JSON without validators (sent in full every time)
``/data/traffic-counts-2024.csv``  20 MB CSV generated on the fly and streamed
``/data/live/air-quality.csv``     changes on every request (holds the time it was made)
``/old/planning-applications.csv`` 301 redirect to ``/data/planning-applications.csv``
``/data/planning-2019.csv``        404 Not Found
``/api/permits.json``              500 Internal Server Error
``/api/road-sensors.csv``          slow: answers after SLOW_SECONDS
``/timetables``                    an HTML page where data was promised
=================================  ==================================================
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import hashlib
import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, Optional, TextIO

LARGE_BYTES = 20 * 1000 * 1000
SLOW_SECONDS = 3.0
# a fixed "last modified" time for the files that do not change
PUBLISHED = datetime.datetime(2025, 3, 14, 9, 30, tzinfo=datetime.timezone.utc)

SPENDING_CSV = (
    b"date,department,supplier,description,amount_gbp\n"
    b"2024-01-08,Highways,Roadline Ltd,Road markings Elm Street,12450.00\n"
    b"2024-01-19,Parks,GreenCare,Tree surgery Riverside Park,3820.50\n"
    b"2024-02-02,Libraries,BookSource,Children's books,2140.75\n"
    b"2024-02-27,Housing,WarmHomes,Insulation grants batch 3,48900.00\n"
    b"2024-03-11,Waste,CleanCity,Street cleansing March,31200.00\n"
)

BUDGET_CSV = (
    b"service,budget_2024_gbp,budget_2025_gbp\n"
    b"Adult social care,41200000,43750000\n"
    b"Children's services,28900000,30100000\n"
    b"Highways and transport,9800000,10250000\n"
    b"Waste and recycling,7400000,7550000\n"
    b"Parks and leisure,3100000,3050000\n"
)
BUDGET_ETAG = '"budget-2025-' + hashlib.sha1(BUDGET_CSV).hexdigest()[:16] + '"'

PLANNING_CSV = (
    b"reference,received,address,proposal,decision\n"
    b"24/0012/FUL,2024-01-05,12 Mill Lane,Single storey rear extension,Approved\n"
    b"24/0031/HOU,2024-01-22,4 Orchard Close,Loft conversion with dormer,Approved\n"
    b"24/0047/FUL,2024-02-09,Unit 7 Wharf Road,Change of use to gym,Pending\n"
    b"24/0052/LBC,2024-02-16,The Old Corn Exchange,Replacement windows,Refused\n"
)

BUS_STOPS = json.dumps({
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "properties": {"code": code, "name": name},
         "geometry": {"type": "Point", "coordinates": [lon, lat]}}
        for code, name, lon, lat in [
            ("NT0101", "Central Station", -1.6178, 54.9686),
            ("NT0102", "Market Square", -1.6132, 54.9721),
            ("NT0117", "Hospital Main Entrance", -1.6315, 54.9802),
            ("NT0240", "Riverside Park", -1.5951, 54.9644),
        ]
    ],
}, indent=2).encode()

TIMETABLES_HTML = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Timetables - Northern Transport</title></head>
<body><h1>Bus timetables</h1>
<p>Our timetables have moved to the journey planner. Please choose a route below.</p>
<ul><li><a href="/timetables/1">Route 1: Central Station - Hospital</a></li>
<li><a href="/timetables/12">Route 12: Market Square - Riverside Park</a></li></ul>
</body></html>
"""

NOT_FOUND_HTML = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Page not found</title></head>
<body><h1>Page not found</h1><p>The page you asked for is not here.</p></body></html>
"""


def _http_date(when: datetime.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(datetime.timezone.utc), usegmt=True)


def _not_modified_since(header: Optional[str], when: datetime.datetime) -> bool:
    if not header:
        return False
    try:
        since = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=datetime.timezone.utc)
    return when <= since


# -- the large file: a fixed-width CSV, so its length is known in advance ----

_LARGE_HEADER = b"timestamp,site,direction,vehicles\n"
_ROW = "2024-{:02d}-{:02d}T{:02d}:00:00,S{:04d},{},{:05d}\n"
_ROW_BYTES = len(_ROW.format(1, 1, 0, 1, "N", 1).encode())
_LARGE_ROWS = (LARGE_BYTES - len(_LARGE_HEADER)) // _ROW_BYTES
LARGE_LENGTH = len(_LARGE_HEADER) + _LARGE_ROWS * _ROW_BYTES


def _large_rows(chunk_rows: int = 4096) -> Iterator[bytes]:
    yield _LARGE_HEADER
    for start in range(0, _LARGE_ROWS, chunk_rows):
        rows = []
        for i in range(start, min(start + chunk_rows, _LARGE_ROWS)):
            hour, day = divmod(i, 24)
            rows.append(_ROW.format(day // 28 % 12 + 1, day % 28 + 1, hour % 24, i % 997,
                                    "NS"[i % 2], (i * 7919) % 3000))
        yield "".join(rows).encode()


class SampleHandler(BaseHTTPRequestHandler):
    server_version = "SamplePublisher/1.0"
    log_file: Optional[TextIO] = None  # set by make_server

    # -- plumbing ---------------------------------------------------------

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - base signature
        if self.log_file is not None:
            line = format % args
            self.log_file.write(f"{self.log_date_time_string()} {line}\n")
            self.log_file.flush()

    def _send(self, status: int, body: bytes = b"", content_type: Optional[str] = None,
              headers: Optional[dict] = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _static(self, body: bytes, content_type: str, *, etag: Optional[str] = None,
                last_modified: Optional[datetime.datetime] = None,
                filename: Optional[str] = None) -> None:
        headers = {}
        if etag:
            headers["ETag"] = etag
        if last_modified:
            headers["Last-Modified"] = _http_date(last_modified)
        if filename:
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        inm = self.headers.get("If-None-Match")
        if etag and inm and etag in [t.strip() for t in inm.split(",")]:
            self._send(HTTPStatus.NOT_MODIFIED, headers=headers)
            return
        if not inm and last_modified and _not_modified_since(
                self.headers.get("If-Modified-Since"), last_modified):
            self._send(HTTPStatus.NOT_MODIFIED, headers=headers)
            return
        self._send(HTTPStatus.OK, body, content_type, headers)

    # -- the site ------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = self.path.split("?", 1)[0]
        route = ROUTES.get(path)
        try:
            if route is None:
                self._send(HTTPStatus.NOT_FOUND, NOT_FOUND_HTML, "text/html; charset=utf-8")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up (the archiver stops at its size cap, say)

    def index(self) -> None:
        paths = [p for p in ROUTES if p != "/"] + ["/data/planning-2019.csv"]
        links = "".join(f'<li><a href="{p}">{p}</a></li>' for p in paths)
        body = ("<!doctype html><html><head><meta charset='utf-8'>"
                "<title>Sample publisher</title></head><body>"
                "<h1>Sample publisher for the ckanext-archiver demo</h1>"
                f"<ul>{links}</ul></body></html>").encode()
        self._send(HTTPStatus.OK, body, "text/html; charset=utf-8")

    def spending(self) -> None:
        self._static(SPENDING_CSV, "text/csv; charset=utf-8", last_modified=PUBLISHED)

    def budget(self) -> None:
        self._static(BUDGET_CSV, "text/csv; charset=utf-8", etag=BUDGET_ETAG)

    def bus_stops(self) -> None:
        # no ETag, no Last-Modified: every check downloads it again
        self._send(HTTPStatus.OK, BUS_STOPS, "application/geo+json")

    def planning(self) -> None:
        self._static(PLANNING_CSV, "text/csv; charset=utf-8", last_modified=PUBLISHED)

    def planning_moved(self) -> None:
        self._send(HTTPStatus.MOVED_PERMANENTLY, b"", None,
                   {"Location": "/data/planning-applications.csv"})

    def air_quality(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        body = ("generated_at,station,no2_ugm3,pm25_ugm3\n"
                f"{now.isoformat(timespec='microseconds')},Central,"
                f"{20 + now.second % 17},{5 + now.microsecond % 9}\n"
                f"{now.isoformat(timespec='microseconds')},Riverside,"
                f"{14 + now.minute % 11},{4 + now.second % 7}\n").encode()
        self._send(HTTPStatus.OK, body, "text/csv; charset=utf-8",
                   {"Cache-Control": "no-store"})

    def traffic_counts(self) -> None:
        headers = {"Last-Modified": _http_date(PUBLISHED),
                   "Content-Disposition": 'attachment; filename="traffic-counts-2024.csv"'}
        if _not_modified_since(self.headers.get("If-Modified-Since"), PUBLISHED):
            self._send(HTTPStatus.NOT_MODIFIED, headers=headers)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/csv; charset=utf-8")
        self.send_header("Content-Length", str(LARGE_LENGTH))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            for chunk in _large_rows():
                self.wfile.write(chunk)

    def permits(self) -> None:
        body = json.dumps({"error": "database connection pool exhausted"}).encode()
        self._send(HTTPStatus.INTERNAL_SERVER_ERROR, body, "application/json")

    def road_sensors(self) -> None:
        time.sleep(SLOW_SECONDS)
        body = (b"sensor,road,avg_speed_kmh\n"
                b"RS-01,A167 northbound,47\nRS-02,A167 southbound,52\n"
                b"RS-07,Coast Road,61\n")
        self._send(HTTPStatus.OK, body, "text/csv; charset=utf-8")

    def timetables(self) -> None:
        self._send(HTTPStatus.OK, TIMETABLES_HTML, "text/html; charset=utf-8")


ROUTES: dict[str, Callable[[SampleHandler], None]] = {
    "/": SampleHandler.index,
    "/data/spending-2024.csv": SampleHandler.spending,
    "/data/budget-2025.csv": SampleHandler.budget,
    "/api/bus-stops.json": SampleHandler.bus_stops,
    "/data/traffic-counts-2024.csv": SampleHandler.traffic_counts,
    "/data/live/air-quality.csv": SampleHandler.air_quality,
    "/old/planning-applications.csv": SampleHandler.planning_moved,
    "/data/planning-applications.csv": SampleHandler.planning,
    "/api/permits.json": SampleHandler.permits,
    "/api/road-sensors.csv": SampleHandler.road_sensors,
    "/timetables": SampleHandler.timetables,
}


class SampleServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(host: str = "127.0.0.1", port: int = 0,
                log_file: Optional[TextIO] = None) -> SampleServer:
    handler = type("Handler", (SampleHandler,), {"log_file": log_file})
    return SampleServer((host, port), handler)


def start_in_thread(host: str = "127.0.0.1", port: int = 0,
                    log_file: Optional[TextIO] = None) -> SampleServer:
    """Start the server in a daemon thread; ``server.shutdown()`` stops it."""
    server = make_server(host, port, log_file)
    threading.Thread(target=server.serve_forever, name="sample-server",
                     daemon=True).start()
    return server


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    server = make_server(args.host, args.port, sys.stderr)
    print(f"Serving on http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
