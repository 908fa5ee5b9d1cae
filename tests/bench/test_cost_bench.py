"""bench/cost_bench.py runs (as a --quick smoke run) and prints every row, so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ROWS = (
    "warm `get_one_instance(service=...)` (keywords)",
    "same, prepared request object",
    "CPU per idle revision check",
    "CPU per heartbeat, ",
    "instances at TTL 1 from one process",
    "memory per cached instance",
    "propagation at 0.3 s refresh, max",
    "event-loop lag, 1 ms ticker, p99",
)


def test_quick_run_prints_every_figure_for_both_front_ends() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cost_bench.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    for row in ROWS[:-1]:
        found = [line for line in lines if row in line]
        # One row per front end in the cost table.
        assert {line.split(" | ")[1] for line in found} == {"sync", "async"}, row
        assert not any("nan" in line for line in found), found
    assert any(ROWS[-1] in line for line in lines)
    assert "random.choice" in done.stdout and "bare blocking Heartbeat unary" in done.stdout
