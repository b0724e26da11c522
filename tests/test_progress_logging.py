"""Logs that talk when nobody watches a terminal (issue 20 §2): off a terminal every long
command writes a one-line progress record at a steady interval (done/total, rate, ETA and the
stage's fields, the loss for training); on a terminal the rich bar."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_input import REPO, World, build_world

from pairmine.progress import DEFAULT_INTERVAL, IntervalProgress, interval_from

# one record: "2026-12-07 18:35:53 embed: 1,792/2,000 images (89.6%)  148.3 images/s ..."
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<what>[^:]+): (?P<done>[\d,]+)/"
                    r"(?P<total>[\d,]+) (?P<unit>\S+) \([\d.]+%\)  [\d,.]+ \S+/s  "
                    r"elapsed [\d:]+  ETA (?:[\d:]+|\?)(?P<fields>.*)$")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_record_holds_done_total_rate_eta_and_the_fields() -> None:
    clock = Clock()
    lines: list[str] = []
    with IntervalProgress(lines.append, interval=0, clock=clock) as progress:
        assert progress.record() is None  # nothing started: nothing to say
        progress.start("epoch 1/3", total=1000, unit="images")
        clock.now += 10
        progress.advance(250, loss=6.123456, lr="0.03")
        line = progress.record()
        progress.finish()
        assert progress.record() is None
    assert line == ("epoch 1/3: 250/1,000 images (25.0%)  25.0 images/s  elapsed 0:10  "
                    "ETA 0:30  loss=6.123  lr=0.03")
    assert not lines  # interval 0: no thread, no records


def test_an_unknown_total_has_no_eta() -> None:
    clock = Clock()
    with IntervalProgress(lambda _: None, interval=0, clock=clock) as progress:
        progress.start("scan", total=None, unit="files")
        clock.now += 3700
        progress.advance(7)
        assert progress.record() == "scan: 7 files  0.0 files/s  elapsed 1:01:40  ETA ?"


def test_records_come_at_the_interval_even_when_the_stage_is_quiet() -> None:
    import threading

    lines: list[str] = []
    got = threading.Event()

    def write(line: str) -> None:
        lines.append(line)
        if len(lines) >= 3:
            got.set()

    with IntervalProgress(write, interval=0.01) as progress:
        progress.start("match", total=10, unit="blocks")
        assert got.wait(10)
    assert all(RECORD.match(line) for line in lines), lines


@pytest.mark.parametrize(("value", "seconds"), [(None, DEFAULT_INTERVAL), ("", DEFAULT_INTERVAL),
                                                ("0.5", 0.5), ("0", 0.0),
                                                ("soon", DEFAULT_INTERVAL),
                                                ("-1", DEFAULT_INTERVAL),
                                                ("inf", DEFAULT_INTERVAL),
                                                ("nan", DEFAULT_INTERVAL)])
def test_the_interval_variable(value: str | None, seconds: float) -> None:
    assert interval_from(value) == seconds


# ---------------------------------------------------------------------------------------------
# the commands, as a Slurm job runs them: stderr a pipe


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


def run_piped(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PAIRMINE_PROGRESS_INTERVAL": "0.05",
           "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "pairmine", *argv], capture_output=True,
                          text=True, timeout=300, env=env, check=False)


def records(stderr: str) -> list[re.Match[str]]:
    return [m for line in stderr.splitlines() if (m := RECORD.match(line))]


def test_embed_off_a_terminal_logs_records_not_a_bar(world: World, tmp_path: Path) -> None:
    run = run_piped(["embed", str(world.images), str(tmp_path / "emb"), "--encoder",
                     world.spec, "--workers", "0", "--device", "cpu", "--batch-size", "2"])
    assert run.returncode == 0, run.stderr
    found = records(run.stderr)
    assert found, run.stderr
    assert {m["what"] for m in found} == {"embed"}
    assert {m["total"] for m in found} == {"30"} and {m["unit"] for m in found} == {"images"}
    assert "\x1b[" not in run.stderr  # no terminal control sequences in a log file
    assert "━" not in run.stderr


def test_train_with_v_off_a_terminal_talks_and_shows_the_loss(world: World,
                                                                tmp_path: Path) -> None:
    run = run_piped(["-v", "train", str(world.images), str(tmp_path / "run"), "--arch",
                     "resnet18-cifar", "--epochs", "1", "--batch-size", "4", "--bn-groups", "2",
                     "--device", "cpu", "--workers", "0", "--precision", "fp32",
                     "--max-steps", "6"])
    assert run.returncode == 0, run.stderr
    found = [m for m in records(run.stderr) if m["what"].startswith("epoch 1/1")]
    assert found, run.stderr
    assert any("loss=" in m["fields"] for m in found), run.stderr
    # -v: the log records are plain dated lines too, not rich's wrapped columns
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ", run.stderr, re.M), run.stderr
