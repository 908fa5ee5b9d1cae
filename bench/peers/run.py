"""Peer comparison: polaris_sdk beside etcd and ZooKeeper, measured in one run.

    .venv/bin/python bench/peers/run.py                 # set up, measure, print the table
    .venv/bin/python bench/peers/run.py --write-readme  # also record it in bench/README.md
    .venv/bin/python bench/peers/run.py --quick         # a smoke run, small counts

What it does, in order:

1. installs Debian's ``etcd-server`` and ``zookeeper`` with apt-get when they
   are missing (a peer that cannot be installed or started is skipped, with the
   reason in the output);
2. creates ``bench/peers/.venv`` with the peers' Python clients
   (``requirements.txt``: aetcd, kazoo) — apart from the project's venv;
3. starts etcd, ZooKeeper (java on a private config and data dir) and
   ``python -m polaris_sdk.server`` on 127.0.0.1, free ports, data under
   ``bench/peers/.data/`` (removed at the end);
4. runs the sections — registration round trip, propagation, failure
   detection, keep-alive cost and consumer memory, selection — each system's
   part in worker processes (``polaris_worker.py`` in the project venv,
   ``etcd_worker.py`` / ``zk_worker.py`` in the peers' venv), each worker
   bounded by a timeout after which it is killed and the cell reads "failed";
5. stops every process it started, also on an error or Ctrl-C / SIGTERM.

Only loopback addresses are used; every loop is bounded by a count and a
deadline. CPU figures are this machine's share of one core (utime + stime of
the process, all threads, from /proc) over a fixed window.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import json
import math
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import servers  # noqa: E402

README = ROOT / "bench" / "README.md"
HEADING = "## Peer comparison (bench/peers/)"
BEGIN = "<!-- peers:results:begin -->"
END = "<!-- peers:results:end -->"
PEER_VENV = HERE / ".venv"
DATA = HERE / ".data"
SYSTEMS = ("polaris", "etcd", "zookeeper")
TITLES = {
    "polaris": "polaris_sdk + embedded server",
    "etcd": "etcd + aetcd",
    "zookeeper": "ZooKeeper + kazoo",
}
WORKERS = {"polaris": "polaris_worker.py", "etcd": "etcd_worker.py", "zookeeper": "zk_worker.py"}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; every loop in the workers is bounded by these."""

    rtt_count: int = 500
    propagation_count: int = 100
    propagation_window_slow: float = 40.0  # polaris_sdk at 2 s refresh
    propagation_window: float = 10.0
    detect_long_samples: int = 3
    detect_short_samples: int = 5
    keep_count: int = 1000
    cpu_window: float = 30.0
    idle_window: float = 10.0
    settle: float = 3.0
    select_budget: float = 1.5


QUICK = Plan(
    rtt_count=50,
    propagation_count=20,
    propagation_window_slow=8.0,
    propagation_window=3.0,
    detect_long_samples=1,
    detect_short_samples=1,
    keep_count=200,
    cpu_window=5.0,
    idle_window=3.0,
    settle=1.0,
    select_budget=0.3,
)

# (system, label, ttl, long) -- etcd's and ZooKeeper's usual settings plus a
# short one; polaris_sdk at TTL 5 (its default) and 1.
DETECTIONS = (
    ("polaris", "TTL 5 s", 5.0, True),
    ("polaris", "TTL 1 s", 1.0, False),
    ("etcd", "lease TTL 10 s", 10.0, True),
    ("etcd", "lease TTL 2 s", 2.0, False),
    ("zookeeper", "session 10 s", 10.0, True),
    ("zookeeper", "session 4 s", 4.0, False),
)


# ------------------------------------------------------------------ workers


class Worker:
    """One worker process in a process group of its own; stop() always ends it."""

    def __init__(self, python: str, system: str, argv: list[str], log_path: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.name = f"{system} {argv[0]}"
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [python, str(HERE / WORKERS[system]), *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=HERE,
                text=True,
                start_new_session=True,
            )
        self.log_path = log_path
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="polaris-bench-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.name}: no @{kind} within {timeout:.0f} s") from None
            if line is None:
                self.process.wait(10)
                tail = self.log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}) before @{kind}:\n{tail}"
                )
            if line.startswith(f"@{kind} "):
                return dict(json.loads(line.split(" ", 1)[1]))

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def stop(self, timeout: float = 60) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # The worker is still alive (not reaped), so its group id is still its
            # own: SIGKILL reaches it and any provider it started, nothing else. A
            # worker that exits by itself has stopped its providers already, and a
            # provider left behind exits when its stdin (the worker's pipe) closes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self._reader.join(10)


class Runner:
    """Starts workers, remembers them, and stops any left running."""

    def __init__(self, pythons: dict[str, str], targets: dict[str, str], work: Path) -> None:
        self.pythons = pythons
        self.targets = targets
        self.work = work
        self.live: list[Worker] = []

    def start(self, system: str, mode: str, **options: Any) -> Worker:
        argv = [mode, "--target", self.targets[system], "--prefix", f"bench-{os.getpid()}"]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False:
                argv += [flag, str(value)]
        worker = Worker(self.pythons[system], system, argv, self.work / f"worker-{system}.log")
        self.live.append(worker)
        return worker

    def finish(self, worker: Worker, grace: float = 60) -> None:
        worker.stop(grace)
        if worker in self.live:
            self.live.remove(worker)

    @contextlib.contextmanager
    def session(self, system: str, mode: str, **options: Any) -> Iterator[Worker]:
        worker = self.start(system, mode, **options)
        try:
            yield worker
        except BaseException:
            # Failed, timed out or interrupted: no clean goodbye worth waiting for.
            self.finish(worker, grace=2)
            raise
        # A clean stop may take a while: a provider deregisters what it kept alive.
        self.finish(worker)

    def one_shot(self, system: str, mode: str, timeout: float, **options: Any) -> dict[str, Any]:
        with self.session(system, mode, **options) as worker:
            return worker.expect("result", timeout)

    def close(self) -> None:
        for worker in list(self.live):
            self.finish(worker, grace=2)


# ------------------------------------------------------------------ measures


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def cpu_shares(pids: dict[str, int], window: float) -> dict[str, float]:
    """Share of one core each process used over ``window`` seconds."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    return {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def rank(q: float) -> float:
        # Nearest rank: the smallest sample with at least q of them at or below it.
        if not ordered:
            return float("nan")
        return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]

    return {
        "n": len(ordered),
        "p50": rank(0.50),
        "p99": rank(0.99),
        "min": ordered[0] if ordered else float("nan"),
        "max": ordered[-1] if ordered else float("nan"),
        "median": statistics.median(ordered) if ordered else float("nan"),
    }


@dataclass
class Results:
    started: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    load: dict[str, list[float]] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    systems: list[str] = field(default_factory=list)

    def cell(self, section: str, key: str, value: Any) -> None:
        self.sections.setdefault(section, {})[key] = value


def guarded(results: Results, section: str, key: str, fn: Callable[[], Any]) -> None:
    """Run one cell's measurement; a failure fills the cell with the reason."""
    try:
        results.cell(section, key, fn())
    except Exception as err:
        lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        # The first line says which worker; the last one is the exception it died of.
        reason = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1].strip()}"
        print(f"  {section} / {key}: failed: {reason}", file=sys.stderr, flush=True)
        results.cell(section, key, {"error": reason})


def section_rtt(run: Runner, results: Results, plan: Plan, systems: list[str]) -> None:
    def measure(system: str) -> dict[str, Any]:
        out = run.one_shot(system, "rtt", 300, count=plan.rtt_count)
        return {label: summary(samples) for label, samples in out["series"].items()}

    for system in systems:
        guarded(results, "rtt", system, functools.partial(measure, system))


def section_propagation(run: Runner, results: Results, plan: Plan, systems: list[str]) -> None:
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    if "polaris" in systems:
        jobs += [
            ("polaris", "2 s refresh", {"refresh": 2.0, "window": plan.propagation_window_slow}),
            ("polaris", "200 ms refresh", {"refresh": 0.2, "window": plan.propagation_window}),
        ]
    jobs += [(s, "watch", {"window": plan.propagation_window}) for s in systems if s != "polaris"]
    for system, label, options in jobs:

        def measure(s: str = system, o: dict[str, Any] = options) -> dict[str, Any]:
            out = run.one_shot(s, "propagation", 300, count=plan.propagation_count, **o)
            samples = next(iter(out["series"].values()))
            return {**summary(samples), "missing": out.get("missing", 0)}

        guarded(results, "propagation", f"{system}|{label}", measure)


def section_detect(run: Runner, results: Results, plan: Plan, systems: list[str]) -> None:
    for system, label, ttl, long in DETECTIONS:
        if system not in systems:
            continue
        samples = plan.detect_long_samples if long else plan.detect_short_samples

        def measure(s: str = system, t: float = ttl, n: int = samples) -> dict[str, Any]:
            # Bounded: per sample at most the worker's own bound plus start-up.
            budget = n * (3 * t + 30 + 90) + 60
            out = run.one_shot(s, "detect", budget, ttl=t, samples=n)
            return {**summary(out["seconds"]), "censored": out["censored"], "failed": out["failed"]}

        guarded(results, "detect", f"{system}|{label}", measure)


def keep_and_watch(
    run: Runner,
    server_set: servers.ServerSet,
    plan: Plan,
    system: str,
    ttl: float,
    shared_lease: bool,
    with_consumer: bool,
) -> dict[str, Any]:
    """Keep ``keep_count`` registrations alive and measure the provider's CPU (and
    the server's); then a consumer watching them: RSS, idle CPU, selection."""
    out: dict[str, Any] = {}
    server_pid = server_set.pid(system)
    with run.session(
        system, "keep", count=plan.keep_count, ttl=ttl, shared_lease=shared_lease
    ) as keeper:
        ready = keeper.expect("ready", 300)
        out["register_s"] = ready["register_s"]
        time.sleep(plan.settle)
        shares = cpu_shares({"client": keeper.process.pid, "server": server_pid}, plan.cpu_window)
        out["client_cpu"], out["server_cpu"] = shares["client"], shares["server"]
        out["client_threads"] = thread_count(keeper.process.pid)
        if not with_consumer:
            return out
        with run.session(
            system, "watch", count=plan.keep_count, budget=plan.select_budget
        ) as watcher:
            seen = watcher.expect("ready", 120)
            out["consumer_rss"], out["consumer_baseline"] = seen["rss"], seen["baseline"]
            out["consumer_load_s"] = seen["load_s"]
            time.sleep(plan.settle)
            idle = cpu_shares({"consumer": watcher.process.pid}, plan.idle_window)
            out["consumer_cpu"] = idle["consumer"]
            out["consumer_threads"] = thread_count(watcher.process.pid)
            watcher.send("select")
            out["rates"] = watcher.expect("result", 120)["rates"]
            watcher.send("stop")
    return out


def section_keep(
    run: Runner, results: Results, plan: Plan, systems: list[str], server_set: servers.ServerSet
) -> None:
    jobs = []
    if "polaris" in systems:
        jobs.append(("polaris", "TTL 5 s", 5.0, False, True))
    if "etcd" in systems:
        jobs.append(("etcd", "a lease per instance, TTL 10 s", 10.0, False, True))
        jobs.append(("etcd", "one shared lease, TTL 10 s", 10.0, True, False))
    if "zookeeper" in systems:
        jobs.append(("zookeeper", "one session, timeout 10 s", 10.0, False, True))
    for system, label, ttl, shared, consumer in jobs:
        measure = functools.partial(
            keep_and_watch, run, server_set, plan, system, ttl, shared, consumer
        )
        guarded(results, "keep", f"{system}|{label}", measure)


# ------------------------------------------------------------------ set-up


def ensure_peer_venv() -> tuple[str | None, str]:
    """bench/peers/.venv with requirements.txt installed; (python, "") or (None, reason)."""
    python = PEER_VENV / "bin" / "python"
    requirements = HERE / "requirements.txt"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = PEER_VENV / ".requirements.sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python), ""
    print("setting up bench/peers/.venv ...", file=sys.stderr, flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True, timeout=300)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
            check=True,
            timeout=900,
        )
        subprocess.run([str(python), "-c", "import aetcd, kazoo"], check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"could not set up bench/peers/.venv: {err}"
    stamp.write_text(wanted)
    return str(python), ""


def polaris_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def package_versions(python: str, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = '?'\n"
        "print(json.dumps(out))\n"
    )
    try:
        done = subprocess.run(
            [python, "-c", code, *names], capture_output=True, text=True, timeout=60, check=True
        )
        return dict(json.loads(done.stdout))
    except (OSError, subprocess.SubprocessError, ValueError):
        return {name: "?" for name in names}


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.system(),
    }


def wait_for_quiet(max_load: float | None, limit: float) -> None:
    """Wait (at most ``limit`` s) for the 1-minute load average to drop below ``max_load``."""
    if max_load is None:
        return
    deadline = time.monotonic() + limit
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        print(f"load {os.getloadavg()[0]:.2f} >= {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(30)


# ------------------------------------------------------------------ report


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def pct(share: float) -> str:
    return f"{share * 100:.1f} %"


def mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def entries(results: Results, section: str, system: str) -> list[tuple[str, Any]]:
    cells = results.sections.get(section, {})
    out = []
    for key, value in cells.items():
        owner, _, label = key.partition("|")
        if owner == system:
            out.append((label, value))
    return out


def failed(value: Any) -> str | None:
    if isinstance(value, dict) and "error" in value:
        return f"failed: {value['error']}"
    return None


def rtt_cell(results: Results, system: str) -> str:
    value = results.sections.get("rtt", {}).get(system)
    if value is None:
        return ""
    if error := failed(value):
        return error
    return "<br>".join(f"{label}: {ms(s['p50'])} / {ms(s['p99'])} ms" for label, s in value.items())


def propagation_cell(results: Results, system: str) -> str:
    parts = []
    for label, value in entries(results, "propagation", system):
        if error := failed(value):
            parts.append(f"{label}: {error}")
            continue
        lost = f", {value['missing']} lost" if value.get("missing") else ""
        parts.append(f"{label}: {ms(value['p50'])} / {ms(value['p99'])} ms{lost}")
    return "<br>".join(parts)


def detect_cell(results: Results, system: str) -> str:
    parts = []
    for label, value in entries(results, "detect", system):
        if error := failed(value):
            parts.append(f"{label}: {error}")
            continue
        over = f", {value['censored']} past the bound" if value.get("censored") else ""
        over += f", {value['failed']} failed to start" if value.get("failed") else ""
        parts.append(
            f"{label}: {value['median']:.1f} s ({value['min']:.1f}-{value['max']:.1f}, "
            f"n={value['n']}{over})"
        )
    return "<br>".join(parts)


def keep_cell(results: Results, system: str) -> str:
    parts = []
    for label, value in entries(results, "keep", system):
        if error := failed(value):
            parts.append(f"{label}: {error}")
            continue
        parts.append(
            f"{label}: client {pct(value['client_cpu'])}, server {pct(value['server_cpu'])}"
        )
    return "<br>".join(parts)


def consumer_cell(results: Results, system: str) -> str:
    for _, value in entries(results, "keep", system):
        if "consumer_rss" in value:
            growth = value["consumer_rss"] - value["consumer_baseline"]
            return (
                f"RSS {mb(value['consumer_rss'])} (+{mb(growth)} after imports); "
                f"idle CPU {pct(value['consumer_cpu'])}"
            )
    return ""


def select_cell(results: Results, system: str) -> str:
    for _, value in entries(results, "keep", system):
        if "rates" in value:
            return "<br>".join(f"{name}: {rate:,.0f}/s" for name, rate in value["rates"].items())
    return ""


def table(results: Results, plan: Plan) -> str:
    systems = [s for s in results.systems if s not in results.skipped]
    rows = [
        ("registration round trip, p50 / p99", rtt_cell),
        ("propagation, register → consumer callback, p50 / p99", propagation_cell),
        (
            "failure detection: provider SIGKILLed → consumer stops returning it, median (min-max)",
            detect_cell,
        ),
        (f"CPU to keep {plan.keep_count:,} registrations alive (share of one core)", keep_cell),
        (f"consumer watching {plan.keep_count:,} instances", consumer_cell),
        (f"instance selection over {plan.keep_count:,} instances, calls/s", select_cell),
    ]
    lines = [
        "| measurement | " + " | ".join(TITLES[s] for s in systems) + " |",
        "|---" * (len(systems) + 1) + "|",
    ]
    for title, cell in rows:
        lines.append(f"| {title} | " + " | ".join(cell(results, s) or "-" for s in systems) + " |")
    return "\n".join(lines)


def report(results: Results, plan: Plan) -> str:
    m, v = results.machine, results.versions
    load = results.load
    skipped = "; ".join(f"{s} ({why})" for s, why in results.skipped.items())
    skipped = f"\n\nSkipped: {skipped}." if skipped else ""
    return (
        f"Measured {results.started} on {m['cpu']}, {m['cores']} cores, {m['system']}, "
        f"Python {m['python']}. Load average (1, 5, 15 min) "
        f"{', '.join(f'{x:.2f}' for x in load.get('before', []))} before the run and "
        f"{', '.join(f'{x:.2f}' for x in load.get('after', []))} after "
        f"(other work shared the machine: read absolute figures as a floor).\n\n"
        f"Versions: polaris_sdk {v.get('polarismesh-sdk', '?')} (grpcio "
        f"{v.get('grpcio', '?')}, protobuf {v.get('protobuf', '?')}); etcd {v.get('etcd', '?')} "
        f"(Debian etcd-server) with aetcd {v.get('aetcd', '?')} (grpcio "
        f"{v.get('peer grpcio', '?')}, protobuf {v.get('peer protobuf', '?')}); ZooKeeper "
        f"{v.get('zookeeper', '?')} (Debian zookeeper, OpenJDK {v.get('java', '?')}, tickTime "
        f"{servers.ZK_TICK_MS} ms) with kazoo {v.get('kazoo', '?')}.\n\n"
        f"Samples: {plan.rtt_count} registrations per system; {plan.propagation_count} "
        f"propagations each (spread over {plan.propagation_window_slow:g} s at 2 s refresh, "
        f"{plan.propagation_window:g} s otherwise); {plan.detect_long_samples} kills at the usual "
        f"settings, {plan.detect_short_samples} at the short ones; keep-alive CPU over "
        f"{plan.cpu_window:g} s, consumer idle CPU over {plan.idle_window:g} s.{skipped}\n\n"
        + table(results, plan)
    )


def write_readme(text: str) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    current = README.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        README.write_text(head + block + tail)
    elif HEADING in current:
        head, tail = current.split(HEADING, 1)
        README.write_text(head + HEADING + "\n\n" + block + "\n" + tail)
    else:
        README.write_text(current.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n")


# ------------------------------------------------------------------ main


def keep_logs(work: Path) -> None:
    """Keep the last run's logs in bench/peers/.data/last-logs/; drop its data."""
    kept = DATA / "last-logs"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True, exist_ok=True)
    for log_file in work.glob("*.log"):
        shutil.copy2(log_file, kept / log_file.name)
    shutil.rmtree(work, ignore_errors=True)


def on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--write-readme", action="store_true", help="record in bench/README.md")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument(
        "--sections",
        default="rtt,propagation,detect,keep",
        help="comma-separated subset of rtt,propagation,detect,keep",
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="subset of " + ",".join(SYSTEMS)
    )
    parser.add_argument("--max-load", type=float, default=None, help="wait for a lower load first")
    parser.add_argument("--load-wait", type=float, default=900, help="seconds to wait at most")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    wanted = [s.strip() for s in args.systems.split(",") if s.strip() in SYSTEMS]
    signal.signal(signal.SIGTERM, on_sigterm)
    # Also when started in the background, where the shell may have ignored SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    results = Results(machine=machine(), plan=plan.__dict__, systems=wanted)
    pythons = {"polaris": polaris_python()}
    peers = [s for s in wanted if s != "polaris"]
    if peers:
        unavailable = servers.ensure_packages(allow_install=not args.no_install)
        peer_python, why = ensure_peer_venv()
        for peer in peers:
            if peer in unavailable:
                results.skipped[peer] = unavailable[peer]
            elif peer_python is None:
                results.skipped[peer] = why
            else:
                pythons[peer] = peer_python
        if peer_python:
            peer_versions = package_versions(peer_python, ["aetcd", "kazoo", "grpcio", "protobuf"])
            results.versions.update(
                aetcd=peer_versions["aetcd"],
                kazoo=peer_versions["kazoo"],
                **{"peer grpcio": peer_versions["grpcio"]},
                **{"peer protobuf": peer_versions["protobuf"]},
            )
    results.versions.update(
        package_versions(pythons["polaris"], ["polarismesh-sdk", "grpcio", "protobuf"])
    )
    for peer, why in results.skipped.items():
        print(f"skipping {peer}: {why}", file=sys.stderr, flush=True)

    wait_for_quiet(args.max_load, args.load_wait)
    work = DATA / f"run-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    run: Runner | None = None
    server_set = servers.ServerSet(work, pythons["polaris"], ROOT)
    try:
        targets = {}
        starters = {
            "polaris": server_set.start_polaris,
            "etcd": server_set.start_etcd,
            "zookeeper": server_set.start_zookeeper,
        }
        for system in wanted:
            if system in results.skipped:
                continue
            try:
                targets[system] = starters[system]()
            except RuntimeError as err:
                results.skipped[system] = f"did not start: {str(err).splitlines()[0]}"
                print(f"skipping {system}: {err}", file=sys.stderr, flush=True)
        if "etcd" in targets:
            results.versions["etcd"] = servers.etcd_version()
        if "zookeeper" in targets:
            results.versions["zookeeper"] = server_set.started["zookeeper"].extra["version"]
            results.versions["java"] = servers.java_version()
        systems = [s for s in SYSTEMS if s in targets]
        run = Runner(pythons, targets, work)
        results.started = datetime.date.today().isoformat()
        results.load["before"] = list(os.getloadavg())
        steps: dict[str, Callable[[], None]] = {
            "rtt": lambda: section_rtt(run, results, plan, systems),
            "propagation": lambda: section_propagation(run, results, plan, systems),
            "detect": lambda: section_detect(run, results, plan, systems),
            "keep": lambda: section_keep(run, results, plan, systems, server_set),
        }
        for name in sections:
            began = time.monotonic()
            print(f"section {name} ...", file=sys.stderr, flush=True)
            steps[name]()
            results.load[name] = list(os.getloadavg())
            print(
                f"section {name}: {time.monotonic() - began:.0f} s, load {os.getloadavg()[0]:.2f}",
                file=sys.stderr,
                flush=True,
            )
        results.load["after"] = list(os.getloadavg())
    finally:
        if run is not None:
            run.close()
        server_set.close()
        keep_logs(work)

    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "last-results.json").write_text(json.dumps(results.__dict__, indent=2, default=str))
    text = report(results, plan)
    print(text)
    if args.write_readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
