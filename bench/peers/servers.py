"""Start and stop the three registries the peer comparison measures.

Contract:

* :func:`ensure_packages` installs Debian's ``etcd-server`` and ``zookeeper``
  with apt-get when a binary is missing (``apt-get update`` once first). It
  never raises: a peer that cannot be installed comes back with the reason,
  and the caller skips it.
* :class:`ServerSet` starts etcd, ZooKeeper and ``python -m polaris_sdk.server``
  on 127.0.0.1, on free ports, each in its own process group with its data in
  a private directory; each start waits for the server to answer (bounded).
  ``close()`` stops every process it started (SIGTERM, then SIGKILL after a
  grace period) and is safe to call more than once, also after a failed
  start. Nothing listens on anything but loopback.

Standard library only: this module runs in whatever interpreter runs
``run.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("polaris_bench.peers.servers")

HOST = "127.0.0.1"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
APT_PACKAGES = {"etcd": "etcd-server", "zookeeper": "zookeeper"}
START_TIMEOUT = 60.0
STOP_GRACE = 15.0
ZK_TICK_MS = 2000  # ZooKeeper's shipped default: sessions may last 2 to 20 ticks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _etcd_binary() -> str | None:
    return shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)


def _java_binary() -> str | None:
    return shutil.which("java")


def missing_peers() -> list[str]:
    missing = []
    if _etcd_binary() is None:
        missing.append("etcd")
    if not ZOOKEEPER_JAR.exists() or _java_binary() is None:
        missing.append("zookeeper")
    return missing


def ensure_packages(allow_install: bool = True) -> dict[str, str]:
    """Install what is missing; returns {peer: reason} for peers still unavailable."""
    missing = missing_peers()
    if not missing:
        return {}
    if not allow_install:
        return {peer: "not installed (--no-install)" for peer in missing}
    if shutil.which("apt-get") is None:
        return {peer: "not installed and apt-get is not available" for peer in missing}
    if os.geteuid() != 0:
        return {peer: "not installed and not running as root for apt-get" for peer in missing}
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    packages = [APT_PACKAGES[peer] for peer in missing]
    print(f"installing {' '.join(packages)} with apt-get ...", file=sys.stderr, flush=True)
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env,
            check=True,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return {peer: f"apt-get install failed: {err}" for peer in missing}
    return {peer: "still missing after apt-get install" for peer in missing_peers()}


def _run_text(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (done.stdout + done.stderr).strip()


def etcd_version() -> str:
    binary = _etcd_binary()
    match = re.search(r"etcd Version: (\S+)", _run_text([binary, "--version"])) if binary else None
    return match.group(1) if match else "?"


def java_version() -> str:
    java = _java_binary()
    match = re.search(r'version "([^"]+)"', _run_text([java, "-version"])) if java else None
    return match.group(1) if match else "?"


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    endpoint: str
    extra: dict[str, str] = field(default_factory=dict)


class ServerSet:
    """The registries of one run; a context manager that stops them all on exit."""

    def __init__(self, work_dir: Path, polaris_python: str, root: Path) -> None:
        self.work_dir = work_dir
        self.polaris_python = polaris_python
        self.root = root
        self.started: dict[str, Started] = {}

    def __enter__(self) -> ServerSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ starting

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Started:
        log_path = self.work_dir / f"{name}.log"
        with open(log_path, "wb") as out:
            # A process group of its own: stopping it cannot touch anything else,
            # and a Ctrl-C in the terminal reaches run.py only, which stops it.
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.work_dir,
                start_new_session=True,
            )
        started = Started(name, process, log_path, "")
        self.started[name] = started
        return started

    def _wait(self, started: Started, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if started.process.poll() is not None:
                break
            if callable(ready) and ready():
                return
            time.sleep(0.1)
        tail = started.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{what} did not start within {START_TIMEOUT:.0f} s:\n{tail}")

    def start_polaris(self) -> str:
        grpc_port, http_port = free_port(), free_port()
        env = dict(os.environ, PYTHONPATH=str(self.root))
        started = self._spawn(
            "polaris",
            [
                self.polaris_python,
                "-m",
                "polaris_sdk.server",
                "--grpc-port",
                str(grpc_port),
                "--http-port",
                str(http_port),
                "--log-level",
                "WARNING",
            ],
            env,
        )
        started.endpoint = f"{HOST}:{grpc_port}"
        self._wait(started, lambda: _connects(grpc_port), "python -m polaris_sdk.server")
        return started.endpoint

    def start_etcd(self) -> str:
        binary = _etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed")
        client, peer = free_port(), free_port()
        data = self.work_dir / "etcd-data"
        started = self._spawn(
            "etcd",
            [
                binary,
                "--name",
                "bench",
                "--data-dir",
                str(data),
                "--listen-client-urls",
                f"http://{HOST}:{client}",
                "--advertise-client-urls",
                f"http://{HOST}:{client}",
                "--listen-peer-urls",
                f"http://{HOST}:{peer}",
                "--initial-advertise-peer-urls",
                f"http://{HOST}:{peer}",
                "--initial-cluster",
                f"bench=http://{HOST}:{peer}",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ],
        )
        started.endpoint = f"{HOST}:{client}"
        self._wait(started, lambda: _etcd_healthy(client), "etcd")
        return started.endpoint

    def start_zookeeper(self) -> str:
        java = _java_binary()
        if java is None or not ZOOKEEPER_JAR.exists():
            raise RuntimeError("ZooKeeper (and a Java runtime) is not installed")
        port = free_port()
        data = self.work_dir / "zookeeper-data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "zoo.cfg"
        config.write_text(
            "\n".join(
                [
                    f"tickTime={ZK_TICK_MS}",
                    f"dataDir={data}",
                    f"clientPort={port}",
                    f"clientPortAddress={HOST}",
                    "admin.enableServer=false",
                    "maxClientCnxns=0",
                    "",
                ]
            )
        )
        started = self._spawn(
            "zookeeper",
            [
                java,
                "-Xmx512m",
                "-Dzookeeper.4lw.commands.whitelist=ruok,srvr",
                "-cp",
                f"/etc/zookeeper/conf:{ZOOKEEPER_JAR}",
                "org.apache.zookeeper.server.ZooKeeperServerMain",
                str(config),
            ],
        )
        started.endpoint = f"{HOST}:{port}"
        # "ruok" answers before the server takes sessions; "srvr" reports the
        # version only once it does.
        self._wait(started, lambda: "version:" in four_letter(port, "srvr"), "ZooKeeper")
        version = re.search(r"version: (\d+(?:\.\d+)+)", four_letter(port, "srvr"))
        started.extra["version"] = version.group(1) if version else "?"
        return started.endpoint

    # ------------------------------------------------------------ looking

    def pid(self, name: str) -> int:
        return self.started[name].process.pid

    def alive(self, name: str) -> bool:
        started = self.started.get(name)
        return started is not None and started.process.poll() is None

    # ------------------------------------------------------------ stopping

    def close(self) -> None:
        for started in list(self.started.values()):
            _stop(started.process)
        self.started.clear()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_GRACE)


def _connects(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def _etcd_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as resp:
            return b'"true"' in resp.read()
    except OSError:
        return False


def four_letter(port: int, word: str) -> str:
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError:
        return ""
    return b"".join(chunks).decode(errors="replace")
