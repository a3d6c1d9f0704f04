#!/usr/bin/env python
"""The ckanext-archiver demo (``make demo``).

Builds a small demo portal in the dev database (``dev.ini``,
``ckan_archiver_dev``) and lets the archiver check a realistic mix of
links, then leaves the portal running:

1. stops whatever an earlier run left behind (pid files in ``var/demo/``);
2. starts a sample web server on a free port of 127.0.0.1 (CSV, JSON, a
   20 MB file, a file that changes on every request, one with an ETag, one
   without validators, a 404, a 500, a redirect, a slow answer, an HTML
   page where data was promised: ``scripts/demo/sample_server.py``);
3. writes ``var/demo/demo.ini`` (``dev.ini`` plus the demo's port and short
   retry delays) and starts the priority and bulk Celery workers
   (``ckan archiver worker``) and ``ckan run``, each in a process group of
   its own;
4. removes the datasets and organizations of an earlier run and creates
   them again (``scripts/demo/site.py``): a sysadmin ``admin`` with a new
   password, two organizations, five datasets (one private) whose ten
   resources point at the sample server. The archiver's hooks queue them on
   the priority queue;
5. waits until every resource has been checked and prints a table of them
   (name, result, status, reason); then re-checks them all on the bulk queue
   with ``ckan archiver update`` (conditional requests: unchanged files are
   not sent again), waits again and prints the table again;
6. prints ``ckan archiver status`` and the broken-links report (from the
   running CKAN's ``/report/broken-links?format=json``, as the admin; from
   the database when that view answers 404);
7. keeps CKAN serving on http://127.0.0.1:5000 (or a free port) until
   Ctrl-C, which stops everything it started. ``--no-serve`` stops and exits
   0 instead (for smoke tests).

Run with the virtualenv's Python: ``.venv/bin/python scripts/demo.py``
(another Python re-runs it with ``$VENV/bin/python``, default ``.venv``).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "scripts" / "demo"
VAR = ROOT / "var" / "demo"
LOGS = VAR / "logs"
DEV_INI = ROOT / "dev.ini"
DEMO_INI = VAR / "demo.ini"
BIN = Path(sys.executable).parent
CKAN = BIN / "ckan"
HOST = "127.0.0.1"
ORGS = ("riverside-council", "northern-transport")
BROKEN_DATASET = "riverside-planning"  # printed as "a dataset with a broken link"
STOP_WAIT = 15.0  # seconds a process gets to stop before SIGKILL

OVERLAY = """\
# Written by scripts/demo.py on every run (do not edit): dev.ini plus the
# demo's own settings.
[app:main]
use = config:../../dev.ini
ckan.site_url = http://{host}:{port}
# Retry a failing server after about 2 s and 4 s, instead of the
# production 30 s, 60 s and 120 s, so that the demo ends within a minute.
ckanext.archiver.retry_delay = 2
ckanext.archiver.max_retries = 2
# No image or table previews are installed here.
ckan.views.default_views =
"""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


class DemoError(Exception):
    """Something the user has to look at; the message says what."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def say(message: str = "") -> None:
    print(message, flush=True)


def step(message: str) -> None:
    say(f"==> {message}")


# -- processes and pid files ---------------------------------------------------

def _start_time(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (None when it does not run): a pid
    file names our process only while this matches."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.1)
    return False


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    term_group: bool  # SIGTERM the whole group (else the leader only)

    @property
    def pid_file(self) -> Path:
        return VAR / f"{self.name}.pid"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.term_group:
                os.killpg(self.popen.pid, signal.SIGTERM)
            else:
                self.popen.send_signal(signal.SIGTERM)

    def kill_rest(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=2)
        self.pid_file.unlink(missing_ok=True)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])


class Processes:
    """What this run started; stops all of it, also on Ctrl-C."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.sample_server: Any = None  # in a thread of this process

    def start(self, name: str, args: list[str], term_group: bool = True) -> Proc:
        log = LOGS / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log, term_group)
        self.procs.append(proc)
        proc.pid_file.write_text(json.dumps({
            "pid": popen.pid, "start": _start_time(popen.pid), "args": args}))
        return proc

    def stop_all(self) -> None:
        running = [p for p in self.procs if p.alive()]
        for proc in running:
            proc.stop()
        deadline = time.monotonic() + STOP_WAIT
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.alive() or _group_members(proc.popen.pid):
                say(f"    {proc.name} did not stop in time: killed")
            proc.kill_rest()
        self.procs = []


def stop_earlier_run() -> None:
    """Stop what an earlier run left running: the demo itself (which then
    stops its own processes), then any process group named by a pid file."""
    main_file = VAR / "demo.pid"
    if main_file.exists():
        with contextlib.suppress(ValueError, OSError):
            info = json.loads(main_file.read_text())
            pid = int(info["pid"])
            if pid != os.getpid() and _start_time(pid) == info["start"]:
                say(f"    stopping the demo still running as pid {pid}")
                os.kill(pid, signal.SIGTERM)
                if not _wait_gone([pid], STOP_WAIT + 10):
                    os.kill(pid, signal.SIGKILL)
    for pid_file in sorted(VAR.glob("*.pid")):
        if pid_file == main_file:
            continue
        try:
            info = json.loads(pid_file.read_text())
            pid = int(info["pid"])
        except (ValueError, OSError, KeyError, TypeError):
            pid_file.unlink(missing_ok=True)
            continue
        start = _start_time(pid)
        # Our processes lead their own group. A leader still running with a
        # different start time is another program that got the pid: leave it.
        # A dead leader with members left: those are ours (a group id is not
        # reused while it has members).
        if start is None or start == info.get("start"):
            members = _group_members(pid)
            if members:
                count = f"{len(members)} process{'' if len(members) == 1 else 'es'}"
                say(f"    stopping {pid_file.stem} left by an earlier run "
                    f"(process group {pid}, {count})")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
                if not _wait_gone(members, STOP_WAIT):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    _wait_gone(members, 5)
        pid_file.unlink(missing_ok=True)


# -- ports, config, database ---------------------------------------------------

def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def choose_port(wanted: int) -> int:
    if _port_free(wanted):
        return wanted
    port = _free_port()
    say(f"    port {wanted} is taken: CKAN will use {port}")
    return port


def database_url() -> str:
    parser = configparser.RawConfigParser(strict=False)
    parser.read(DEV_INI)
    url = parser.get("app:main", "sqlalchemy.url")
    return url.replace("postgresql+psycopg2://", "postgresql://")


class Database:
    def __init__(self, url: str) -> None:
        import psycopg2

        try:
            self.conn = psycopg2.connect(url)
        except psycopg2.OperationalError as e:
            raise DemoError(f"cannot connect to the database of dev.ini: {e}") from e
        self.conn.autocommit = True

    def close(self) -> None:
        self.conn.close()

    def rows(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            names = [c.name for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def resources(self) -> list[dict[str, Any]]:
        return self.rows("""
            SELECT g.name AS org, g.title AS org_title, p.name AS dataset,
                   p.private, r.id, r.name, r.url, a.status_id, a.is_broken,
                   a.reason, a.http_status, a.url_redirected_to, a.is_web_page,
                   a.size, a.failure_count, a.queued_at, a.updated,
                   a.status_id IS NOT NULL
                     AND (a.queued_at IS NULL OR a.updated >= a.queued_at) AS done
            FROM resource r
            JOIN package p ON p.id = r.package_id
            JOIN "group" g ON g.id = p.owner_org
            LEFT JOIN archival a ON a.resource_id = r.id
            WHERE g.name = ANY(%s) AND r.state = 'active' AND p.state = 'active'
            ORDER BY p.metadata_created, r.position""", (list(ORGS),))

    def bytes_received(self, resource_ids: list[str], since: Any) -> tuple[int, int]:
        row = self.rows("""
            SELECT COALESCE(SUM(bytes_received) FILTER (WHERE checked_at < %s), 0) AS before,
                   COALESCE(SUM(bytes_received) FILTER (WHERE checked_at >= %s), 0) AS after
            FROM archival_history WHERE resource_id = ANY(%s)""",
                        (since, since, resource_ids))[0]
        return int(row["before"]), int(row["after"])


# -- steps ---------------------------------------------------------------------

def ckan(*args: str) -> list[str]:
    return [str(CKAN), "-c", str(DEMO_INI), *args]


def run(args: list[str], what: str, timeout: float = 120) -> str:
    """Run a short command; its stdout (its stderr goes to the log)."""
    log = LOGS / "commands.log"
    with open(log, "a") as err:
        err.write(f"\n$ {' '.join(args)}\n")
        err.flush()
        try:
            result = subprocess.run(args, cwd=ROOT, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, text=True,
                                    timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DemoError(f"{what} took over {timeout:.0f} s; see {_rel(log)}") from e
    if result.returncode != 0:
        raise DemoError(f"{what} failed (exit {result.returncode}); see {_rel(log)}:\n"
                        + textwrap.indent(result.stdout.strip(), "    "))
    return result.stdout


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def load_sample_server() -> Any:
    spec = importlib.util.spec_from_file_location(
        "archiver_demo_sample_server", DEMO_DIR / "sample_server.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_alive(procs: Processes) -> None:
    for proc in procs.procs:
        if not proc.alive():
            raise DemoError(f"{proc.name} stopped (exit {proc.popen.returncode}); "
                            f"the end of {_rel(proc.log)}:\n{proc.tail()}")


def wait_checked(db: Database, procs: Processes, timeout: float, label: str) -> float:
    """Wait until every demo resource has been checked since it was last
    queued; return the seconds it took."""
    started = time.monotonic()
    shown = None
    while True:
        rows = db.resources()
        done = [r for r in rows if r["done"]]
        waiting = [r["name"] for r in rows if not r["done"]]
        if rows and not waiting:
            took = time.monotonic() - started
            say(f"    {label}: all {len(rows)} resources checked in {took:.0f} s")
            return took
        if len(done) != shown:
            shown = len(done)
            say(f"    {label}: {len(done)} of {len(rows)} checked")
        check_alive(procs)
        if time.monotonic() - started > timeout:
            raise DemoError(
                f"{label}: still waiting after {timeout:.0f} s for: {', '.join(waiting)}\n"
                f"    see the worker logs in {_rel(LOGS)}/")
        time.sleep(0.5)


def wait_http(url: str, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if not proc.alive():
            raise DemoError(f"ckan run stopped (exit {proc.popen.returncode}); the end of "
                            f"{_rel(proc.log)}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise DemoError(f"CKAN did not answer {url} within {timeout:.0f} s; "
                            f"see {_rel(proc.log)}")
        time.sleep(0.5)


def get_json(url: str, token: Optional[str] = None) -> Optional[dict[str, Any]]:
    """GET a JSON document; None on 404."""
    request = urllib.request.Request(url, headers={"Authorization": token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


# -- printing ------------------------------------------------------------------

def _human(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _verdict(row: dict[str, Any]) -> str:
    if row["status_id"] is None:
        return "unchecked"
    if row["is_broken"] is None:
        return "not sure"
    return "BROKEN" if row["is_broken"] else "ok"


def _status_text(status_id: Optional[int]) -> str:
    try:
        from ckanext.archiver import status as st
    except ImportError:  # not the virtualenv's Python: show the id
        return str(status_id)
    return st.text(status_id) or "-"


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["name"]) for r in rows) + 2
    status_width = max(len(_status_text(r["status_id"])) for r in rows) + 2
    dataset = None
    say(f"    {'RESOURCE':<{width}}{'RESULT':<11}{'STATUS':<{status_width}}REASON")
    for r in rows:
        if r["dataset"] != dataset:
            dataset = r["dataset"]
            private = " (private)" if r["private"] else ""
            say(f"  {r['org_title']} / {dataset}{private}")
        reason = r["reason"] or ""
        if r["url_redirected_to"]:
            reason += f" [redirected to {r['url_redirected_to']}]"
        if r["is_web_page"] and "web page" not in reason:
            reason += " [a web page, not a file]"
        say(f"    {r['name']:<{width}}{_verdict(r):<11}"
            f"{_status_text(r['status_id']):<{status_width}}{reason}")


def print_report(site: str, token: str, rows: list[dict[str, Any]],
                 orgs: dict[str, str]) -> None:
    index_url = f"{site}/report/broken-links?format=json"
    try:
        index = get_json(index_url, token)
        problem = "answered 404: the report view is not there yet"
    except (urllib.error.URLError, OSError, ValueError) as e:
        index = None
        problem = f"failed ({e})"
    if index is None:
        say(f"  (GET {index_url} {problem}; from the database instead)")
        for org, title in orgs.items():
            mine = [r for r in rows if r["org"] == org]
            broken = [r for r in mine if r["is_broken"]]
            say(f"  {title}: {len(broken)} of {len(mine)} resources broken")
            for r in broken:
                say(f"    - {r['dataset']} / {r['name']}: {_status_text(r['status_id'])}: "
                    f"{r['reason']}")
        return
    say(f"  GET {index_url} (as admin)")
    for summary in index.get("rows", []):
        if summary.get("organization") not in orgs:
            continue  # the dev database may hold other organizations too
        say("  {title}: {broken_resources} of {resources} resources broken "
            "({broken_resources_percent}%), in {broken_datasets} of {datasets} "
            "datasets".format(**summary))
        org_url = f"{site}/report/broken-links/{summary['organization']}?format=json"
        detail = get_json(org_url, token) or {}
        for row in detail.get("rows", []):
            say(f"    - {row['dataset']} / {row['resource_name']}: {row['status']}: "
                f"{row['reason']}")
    anonymous = get_json(index_url) or {}
    seen = sum(s.get("broken_resources") or 0 for s in anonymous.get("rows", [])
               if s.get("organization") in orgs)
    say(f"  An anonymous reader sees {seen} broken resource{'' if seen == 1 else 's'} "
        "in these organizations (the private dataset's are hidden).")


# -- main ----------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build and run the ckanext-archiver demo portal (make demo).")
    parser.add_argument("--no-serve", action="store_true",
                        help="do everything, print the results, then stop and exit")
    parser.add_argument("--port", type=int, default=5000,
                        help="port for CKAN (default 5000; a free one when taken)")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds to wait for each round of checks (default 120)")
    return parser.parse_args()


def preflight() -> None:
    if not CKAN.exists():
        raise DemoError(f"{CKAN} not found: run `make setup`, then this script with the "
                        "virtualenv's Python (.venv/bin/python scripts/demo.py)")
    if not DEV_INI.exists():
        raise DemoError("dev.ini not found: run `make setup` (scripts/setup.sh) first")
    try:
        import psycopg2  # noqa: F401
    except ImportError as e:
        raise DemoError("psycopg2 is missing: run this with .venv/bin/python") from e


def demo(args: argparse.Namespace, procs: Processes) -> Optional[Proc]:
    t0 = time.monotonic()
    preflight()
    VAR.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(exist_ok=True)
    step("Cleaning up after earlier runs")
    stop_earlier_run()
    (VAR / "demo.pid").write_text(json.dumps({"pid": os.getpid(),
                                              "start": _start_time(os.getpid())}))
    for old in LOGS.glob("*.log"):
        old.unlink()

    step("Starting the sample web server")
    sample = load_sample_server()
    sample_log = open(LOGS / "sample-server.log", "a", buffering=1)
    server = sample.start_in_thread(HOST, 0, sample_log)
    procs.sample_server = server
    sample_url = f"http://{HOST}:{server.server_address[1]}"
    say(f"    {sample_url}/ (requests logged to {_rel(LOGS / 'sample-server.log')})")
    say("    serves CSV with Last-Modified, CSV with an ETag, JSON without validators, a 20 MB")
    say("    CSV (streamed), a CSV that changes on every request, a 301 redirect, a 404, a 500,")
    say(f"    a CSV after a {sample.SLOW_SECONDS:g} s wait, an HTML page where a CSV was promised")

    port = choose_port(args.port)
    site = f"http://{HOST}:{port}"
    DEMO_INI.write_text(OVERLAY.format(host=HOST, port=port))

    step("Starting the archiver workers (priority, bulk) and CKAN")
    procs.start("worker-priority", ckan("archiver", "worker", "priority"), term_group=False)
    procs.start("worker-bulk", ckan("archiver", "worker", "bulk"), term_group=False)
    web = procs.start("ckan-run", ckan("run", "--host", HOST, "--port", str(port),
                                       "--disable-reloader", "--threaded"))
    say(f"    logs in {_rel(LOGS)}/, config {_rel(DEMO_INI)} (dev.ini + demo settings)")

    step("Creating the demo site: sysadmin, 2 organizations, 5 datasets (1 private)")
    made = json.loads(run([sys.executable, str(DEMO_DIR / "site.py"), str(DEMO_INI),
                           sample_url], "creating the demo datasets"))
    removed = made["removed"]
    if removed["datasets"]:
        say("    removed the earlier run's {datasets} datasets and {resources} resources "
            "(its organizations are used again)".format(**removed))
    admin = made["admin"]
    orgs = {o["name"]: o["title"] for o in made["organizations"]}
    resource_count = sum(len(d["resources"]) for d in made["datasets"])
    say(f"    sysadmin: {admin['name']}, password {admin['password']}")
    say(f"    {resource_count} resources queued on the priority queue by the plugin's hooks")

    db = Database(database_url())
    step("First check (priority queue)")
    wait_checked(db, procs, args.timeout, "priority")
    print_table(db.resources())

    step("Re-check on the bulk queue: ckan archiver update " + " ".join(ORGS))
    say("    " + run(ckan("archiver", "update", *ORGS), "ckan archiver update").strip())
    rows = db.resources()
    second_round = min(r["queued_at"] for r in rows)
    wait_checked(db, procs, args.timeout, "bulk")
    rows = db.resources()
    print_table(rows)
    first, again = db.bytes_received([r["id"] for r in rows], second_round)
    say(f"    Bytes received: {_human(first)} on the first check, {_human(again)} on the "
        "re-check")
    say("    (unchanged files with an ETag or Last-Modified answered 304 Not Modified).")

    step(f"ckan -c {_rel(DEMO_INI)} archiver status --no-workers   (counts the whole site)")
    say(textwrap.indent(run(ckan("archiver", "status", "--no-workers"),
                            "ckan archiver status").rstrip(), "    "))

    step("Broken-links report")
    wait_http(f"{site}/api/3/action/status_show", web, 60)
    print_report(site, admin["token"], rows, orgs)
    db.close()
    say()

    broken = next((r for r in rows if r["dataset"] == BROKEN_DATASET and r["is_broken"]),
                  None)
    say(f"Demo ready in {time.monotonic() - t0:.0f} s.")
    say("No Solr here: the demo-only archiver_nosearch plugin (in dev.ini) turns CKAN's")
    say("search index off, so dataset searches and organization pages list no datasets;")
    say("open the datasets by their links below.")
    say()
    say(f"  Broken-links report       {site}/report/broken-links")
    for org in orgs:
        say(f"    {org + ':':<24}{site}/report/broken-links/{org}")
    say(f"  Dataset with broken links {site}/dataset/{BROKEN_DATASET}")
    if broken:
        say(f"    its 404 resource        {site}/dataset/{BROKEN_DATASET}/resource/{broken['id']}")
    say(f"  Other datasets            {site}/dataset/<name>, names: "
        + ", ".join(d["name"] for d in made["datasets"] if d["name"] != BROKEN_DATASET))
    say(f"  Archiver data in the API  {site}/api/3/action/package_show?id={BROKEN_DATASET}")
    say(f"  Log in (private dataset)  {site}/user/login  as {admin['name']} / "
        f"{admin['password']}")
    say(f"  Sample web server         {sample_url}/")
    say(f"  More: .venv/bin/ckan -c {_rel(DEMO_INI)} archiver view {BROKEN_DATASET}")
    return web


def _use_the_virtualenv() -> None:
    """Re-run with the virtualenv's Python when started with another one."""
    if CKAN.exists():
        return
    python = ROOT / os.environ.get("VENV", ".venv") / "bin" / "python"
    if python.exists() and python.parent != BIN:
        os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def main() -> int:
    _use_the_virtualenv()
    args = parse_args()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    procs = Processes()
    code = 0
    serving = False
    try:
        web = demo(args, procs)
        if not args.no_serve and web is not None:
            serving = True
            say()
            say("CKAN is serving. Press Ctrl-C to stop everything.")
            while True:
                check_alive(procs)
                time.sleep(1)
    except Interrupted as e:
        say()
        say(f"{e}: stopping.")
        code = 0 if serving else 130
    except DemoError as e:
        say()
        say(f"Demo failed: {e}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if procs.procs:
            step("Stopping the workers, CKAN and the sample server")
        procs.stop_all()
        if procs.sample_server is not None:
            procs.sample_server.shutdown()
            procs.sample_server.server_close()
        main_file = VAR / "demo.pid"
        with contextlib.suppress(OSError, ValueError):
            if json.loads(main_file.read_text())["pid"] == os.getpid():
                main_file.unlink()
    if code == 0:
        say("Stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
