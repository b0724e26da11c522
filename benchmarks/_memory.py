"""What the memory benchmarks share: this process's memory from /proc, and a child run that
reports JSON (one fresh process per measurement, so nothing an earlier one held counts)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

_FIELDS = {"VmRSS": "rss", "RssAnon": "anon", "VmHWM": "hwm"}


def proc_status() -> dict[str, float]:
    """This process's RSS, RssAnon and peak RSS (VmHWM), in MiB."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in _FIELDS:
                out[_FIELDS[key]] = int(line.split()[1]) / 1024
    return out


def child_json(script: str, args: list[str], env: dict[str, str] | None = None) -> Any:
    """Run ``script --child ARGS`` in a fresh Python; its last stdout line, as JSON."""
    run = subprocess.run([sys.executable, script, "--child", *args], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])
