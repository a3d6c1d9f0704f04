"""Several hosts for real: three worker "hosts" and a web node in network
namespaces made by this test, sharing one Redis (a private one), PostgreSQL
and SeaweedFS, all in the root namespace behind forwarders bound to the veth
ends; an origin server reached under one name from every host.

Shows: no resource is archived twice at the same time; per-host politeness
holds across hosts; a host killed mid-batch has its work finished by the
others (the checks granted to it too: the live workers' sweep); every
cached copy is served by the web node, which has no archive disk. Skips
(with the reason) where namespaces cannot be made.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import redis
from ckan import model
from ckan.tests import factories

from ckanext.archiver import config
from ckanext.archiver.model import Archival
from ckanext.archiver.tests import netns
from ckanext.archiver.tests.helpers import wait_for
from ckanext.archiver.tests.reliability.helpers import write_ini
from ckanext.archiver.worker import dispatch

pytestmark = [pytest.mark.reliability,
              pytest.mark.usefixtures("with_plugins", "clean_db")]

ORIGIN = "origin.w17.test"
WEB = """
import sys
from ckanext.archiver.testing import nosearch
nosearch.install()
from ckan.cli import load_config
from ckan.config.middleware import make_app
from werkzeug.serving import run_simple
run_simple(sys.argv[2], int(sys.argv[3]), make_app(load_config(sys.argv[1])), threaded=True)
"""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
_plain = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def host_options(lab, i, ports, s3, ckan_config, tmp_path, **extra):
    """Raw ini options for a process in namespace ``i``."""
    db = urllib.parse.urlsplit(ckan_config["sqlalchemy.url"])
    at = lab.root_ip(i)
    options = {
        "sqlalchemy.url": db._replace(netloc=f"{db.username}:{db.password}@{at}:{ports['pg']}"
                                      ).geturl(),
        "ckan.redis.url": f"redis://{at}:{ports['redis']}/0",
        "ckanext.archiver.broker_url": f"redis://{at}:{ports['redis']}/0",
        "ckanext.archiver.archive_dir": str(tmp_path / f"disk-of-host-{i}"),
        "ckanext.archiver.allowed_networks": "10.200.0.0/16",
        "ckanext.archiver.per_host_min_interval": "0",
        "ckanext.archiver.max_retries": "0",
        "ckanext.archiver.visibility_timeout": "10",
        "ckanext.archiver.batch_wait": "0",
    }
    options.update({"ckanext.archiver." + k: v for k, v in s3.items()})
    options["ckanext.archiver.s3_endpoint_url"] = f"http://{at}:{ports['s3']}"
    options.update(extra)
    return options


@pytest.fixture
def lab():
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"multi-host test needs network namespaces: {reason}")
    made = netns.Lab(4)
    yield made
    made.close()


def _worker(lab, i, ini, tmp_path):
    options = config.current()
    queues = ",".join(options.queue_name(n) for n in ("priority", "bulk"))
    log = open(tmp_path / f"host-{i}.log", "wb")
    proc = lab.popen(i, [sys.executable, "-m", "celery", "-A", "ckanext.archiver.celery_app",
                         "worker", "-Q", queues, "-n", f"host{i}@%h", "--pool=threads",
                         "--concurrency=3", "--without-gossip", "--without-mingle",
                         "--loglevel=INFO"],
                     env=dict(os.environ, CKAN_INI=ini), stdout=log, stderr=log)
    log.close()
    return proc


def _log(tmp_path, i):
    return (tmp_path / f"host-{i}.log").read_text(errors="replace")


def test_three_worker_hosts_and_a_web_node(lab, own_broker, s3_env, seaweedfs, tmp_path,
                                          ckan_config, monkeypatch):
    ports = {"redis": lab.forward(0, own_broker.port), "pg": lab.forward(0, 5432),
             "s3": lab.forward(0, int(seaweedfs.endpoint.rsplit(":", 1)[1]))}
    origin = netns.Origin([lab.root_ip(i) for i in range(3)], delay=0.25)
    lab.alias(ORIGIN)
    s3 = seaweedfs.options(s3_env.bucket)
    try:
        count = 45
        dataset = factories.Dataset(resources=[
            {"url": f"http://{ORIGIN}:{origin.port}/r{n}.csv"} for n in range(count)])
        resources = dataset["resources"]
        dispatch.purge()  # what the plugin's hook queued on priority...
        model.Session.query(Archival).update({"queued_at": None})  # ...and its marks, or
        model.Session.commit()  # each worker's start-up would queue them again (requeue_lost)
        procs = []
        for i in range(3):
            ini = write_ini(str(tmp_path / f"host-{i}.ini"), host_options(
                lab, i, ports, s3, ckan_config, tmp_path,
                **{"ckanext.archiver.per_host_concurrency": "2"}))
            procs.append(_worker(lab, i, ini, tmp_path))
        for i in range(3):
            wait_for(lambda i=i: " ready." in _log(tmp_path, i) or procs[i].poll() is not None,
                     timeout=90, interval=0.2)
            assert procs[i].poll() is None, _log(tmp_path, i)[-3000:]

        monkeypatch.setitem(ckan_config, "ckanext.archiver.batch_size", 3)
        assert dispatch.enqueue([(r["id"], dataset["id"]) for r in resources], "bulk") == count

        # kill a host (SIGKILL, the whole process) while it works on checks:
        # the resources it has claimed (tokens carry the worker's pid). Which
        # host that is depends on who got the origin's slots (the process that
        # frees a slot runs the next check granted it): the first found.
        broker = redis.Redis.from_url(own_broker.url)

        def claimed_by(i):
            rids = []
            for key in broker.scan_iter(match="archiver:*:running:*"):
                token = broker.get(key) or b""
                if token.split(b":")[1:2] == [str(procs[i].pid).encode()]:
                    rids.append(key.decode().rsplit(":", 1)[1])
            return rids

        def unfinished(rids):
            model.Session.remove()
            return [a.resource_id for a in model.Session.query(Archival).filter(
                Archival.resource_id.in_(rids), Archival.status_id.is_(None))]

        def working():
            if len(origin.log) >= 6:
                for i in range(3):
                    rids = claimed_by(i)
                    if unfinished(rids):
                        return i, rids
            return None

        victim, claimed = wait_for(working, timeout=60, interval=0.05)
        lab.kill(procs[victim])
        survivors = [i for i in range(3) if i != victim]
        killed_at = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        kill_clock = time.monotonic()
        started_not_done = unfinished(claimed)
        assert started_not_done, f"host {victim} finished its checks before the kill"

        def all_archived():
            model.Session.remove()
            rows = model.Session.query(Archival).filter(
                Archival.resource_id.in_([r["id"] for r in resources])).all()
            # archived, or archived again later and found unchanged
            ok = [r for r in rows if r.status_id in (0, 1) and r.cache_filepath]
            return rows if len(ok) == count else None

        try:
            # the live workers' sweep (worker.lost) queues the killed host's
            # checks again once they are total_timeout + the claims' TTL old
            # (5 + 30 s here): the checks granted to it (their message was
            # acknowledged long ago) and its batches, before the broker gives
            # those back (visibility_timeout, looked at every ~100 s by kombu)
            rows = wait_for(all_archived, timeout=300, interval=0.5)
        except AssertionError:
            model.Session.remove()
            left = [(a.resource_id, a.status_id, a.reason) for a in model.Session.query(
                Archival).filter(Archival.resource_id.in_([r["id"] for r in resources]))
                if a.status_id not in (0, 1)]
            raise AssertionError(f"not archived: {left}") from None
        all_done = time.monotonic() - kill_clock
        recovered = max((a.updated - killed_at).total_seconds() for a in rows
                        if a.resource_id in started_not_done)
        print(f"\nhost kill: {len(started_not_done)} resources unfinished on host {victim}, "
              f"archived elsewhere {recovered:.1f} s after the kill; all {count} done "
              f"{all_done:.1f} s after it")

        assert origin.overlaps() == [], "a resource was fetched twice at the same time"
        assert origin.max_in_flight <= 2, origin.max_in_flight  # per-host cap, 3 hosts
        assert {p for p, _, _ in origin.log} == {f"/r{n}.csv" for n in range(count)}
        hosts_that_worked = sum("archive_resources" in _log(tmp_path, i) and
                                "succeeded" in _log(tmp_path, i) for i in survivors)
        assert hosts_that_worked == 2
        assert recovered > 0
        assert any("checks lost with their worker" in _log(tmp_path, i) for i in survivors)

        # the web node: no archive disk, every copy through a presigned GET
        web_disk = tmp_path / "web-has-no-disk"
        web_ini = write_ini(str(tmp_path / "web.ini"), host_options(
            lab, 3, ports, s3, ckan_config, tmp_path,
            **{"ckanext.archiver.archive_dir": str(web_disk)}))
        web_port = 8080
        lab.popen(3, [sys.executable, "-c", WEB, web_ini, lab.ns_ip(3), str(web_port)],
                  stdout=open(tmp_path / "web.log", "wb"), stderr=subprocess_stdout())
        base = f"http://{lab.ns_ip(3)}:{web_port}"

        def web_up():
            try:
                _plain.open(base + "/api/3/action/status_show", timeout=2).close()
                return True
            except OSError:
                return False

        wait_for(web_up, timeout=90, interval=0.5)
        by_id = {a.resource_id: a for a in rows}
        for n, res in enumerate(resources):
            row = by_id[res["id"]]
            filename = row.cache_filepath.rsplit("/", 1)[-1]
            url = f"{base}/dataset/{dataset['id']}/resource/{res['id']}/archive/{filename}"
            with pytest.raises(urllib.error.HTTPError) as redirect:
                _direct.open(url, timeout=10)
            assert redirect.value.code == 302
            location = redirect.value.headers["Location"]
            assert location.startswith(f"http://{lab.root_ip(3)}:{ports['s3']}/")
            with _plain.open(location, timeout=10) as r:
                body = r.read()
            assert hashlib.sha1(body).hexdigest() == row.hash
            assert body == origin.body(f"/r{n}.csv")
        assert not web_disk.exists()
    finally:
        origin.close()


def subprocess_stdout():
    import subprocess

    return subprocess.STDOUT
