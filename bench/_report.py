"""What every benchmark script writes beside its figures: the machine, the load,
wrapped prose, and its own section of bench/README.md."""

from __future__ import annotations

import contextlib
import os
import platform
import textwrap
from pathlib import Path


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def paragraph(text: str) -> list[str]:
    return textwrap.wrap(text, width=88, break_on_hyphens=False)


def write_section(readme: Path, heading: str, section: str) -> None:
    """Replace the ``heading`` section of ``readme`` (up to the next ``## ``), or append it."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else "# Benchmarks\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(heading))
        rest = text[following + 1 :] if following != -1 else ""
        text = text[:start] + section + ("\n" + rest if rest else "")
    readme.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
