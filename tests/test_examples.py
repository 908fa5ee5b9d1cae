"""Every example in examples/ runs, as a user would run it, and exits cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))

# Every example must exit 0 without a traceback; these must also print these lines.
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        "event: 0 instances",
        "event: 3 instances",
        "event: 2 instances; deleted 127.0.0.1:8082",
        "healthy instances now: [8081, 8083]",
        "done",
    ],
    "async_quickstart.py": [
        "event: 0 instances",
        "event: 3 instances",
        "event: deleted 127.0.0.1:8082",
        "healthy instances now: [8081, 8083]",
        "background tasks left: 0",
        "done",
    ],
    "consumer.py": [
        "group=green: [9003] (fallback=False)",
        "(fallback=True)",
        "deleted=['127.0.0.1:9001']",
        "connection state: CONNECTED",
        "done",
    ],
    "calling_services.py": [
        ": open (connection could not be made)",
        "failed calls: 0",
        "done",
    ],
    "raw_stubs.py": [
        "RegisterInstance -> 200000",
        "Discover -> 127.0.0.1:9090 healthy=True",
        "DeregisterInstance -> 200000",
        "done",
    ],
}

# Examples that run until interrupted are driven (with a signal) by their own test.
RUN_ELSEWHERE: dict[str, str] = {
    "provider.py": "tests/provider/test_exit.py",
    "greeter.py": "tests/integrations/greeters.py",
    "fastapi_provider.py": "tests/test_deploy.py",
    "flask_provider.py": "tests/test_deploy.py",
    "django_provider.py": "tests/frameworks/test_django.py",
    "greeter_consumer.py": "tests/test_deploy.py",
}


def test_examples_exist() -> None:
    assert "quickstart.py" in EXAMPLES, "make demo runs examples/quickstart.py"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example(name: str) -> None:
    if name in RUN_ELSEWHERE:
        driver = ROOT / RUN_ELSEWHERE[name]
        assert f"examples/{name}" in driver.read_text(encoding="utf-8"), (
            f"{RUN_ELSEWHERE[name]} no longer runs examples/{name}"
        )
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLARIS_")}
    # The examples import the package from this checkout, as `make demo` does.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, f"examples/{name}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    for line in EXPECTED.get(name, []):
        assert line in proc.stdout, f"{line!r} missing from:\n{proc.stdout}"
