"""Nothing left behind after a crash (issue 12 §4): embed, match and export are killed (as by
``kill -9``: ``os._exit``, no clean-up) after their Nth store step (``PAIRMINE_FAULT=after:N``:
every atomic write, the work folder renamed aside, every file removed by the final clean-up),
then run again: the store's data files are byte-identical to an uninterrupted run's and it
holds exactly the same files (no ``.tmp``, no ``.partial*``, no lock file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from test_bad_input import (
    World,
    build_world,
    data_digests,
    run_cli,
    run_pairmine,
    store_files,
)

KILLED = 137  # what PAIRMINE_FAULT's os._exit returns, as a kill -9 would be reported
COMPLETE = "already holds a complete store"


def writer_argv(w: World, cmd: str, out: Path) -> list[str]:
    if cmd == "embed":
        return ["embed", str(w.images), str(out), "--encoder", w.spec, "--workers", "0",
                "--device", "cpu", "--shard-size", "8"]
    if cmd == "match":
        return ["match", str(w.emb), str(out), "--min", "0.994", "--max", "0.9995",
                "--block-rows", "5", "--max-per-anchor", "3", "--device", "cpu"]
    return ["export", str(w.pairs), str(out), "--shard-size", "20", "--combined"]


def count_steps(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """How many fault points an uninterrupted run passes (counted in this process)."""
    from pairmine.stores import atomic

    monkeypatch.setattr(atomic, "_FAULT_AFTER", 1 << 60)
    monkeypatch.setattr(atomic, "_fault_steps", 0)
    code, output = run_cli(argv)
    assert code == 0, output
    steps: int = atomic._fault_steps
    monkeypatch.setattr(atomic, "_FAULT_AFTER", None)
    return steps


@dataclass(frozen=True)
class KillOutcome:
    step: int
    killed: bool  # the run died at that step
    resumed: bool  # the next run finished the store (or found it complete)
    identical: bool  # data files byte-identical to the uninterrupted run's
    stray: list[str]  # files the uninterrupted run does not have
    exit: int = KILLED  # how the killed run ended, and its last words (when not killed)
    said: str = ""


def kill_and_resume(argv: list[str], out: Path, reference: Path, step: int) -> KillOutcome:
    """Kill a run after ``step`` steps, run it again, compare with ``reference``."""
    died = run_pairmine(argv, env={"PAIRMINE_FAULT": f"after:{step}"})
    killed = died.returncode == KILLED
    code, output = run_cli(argv)
    # killed after the manifest landed: the store is complete and the rerun says so
    resumed = code == 0 or (code == 1 and COMPLETE in output)
    stray = sorted(set(store_files(out)) - set(store_files(reference)))
    missing = set(store_files(reference)) - set(store_files(out))
    identical = not missing and data_digests(out) == data_digests(reference)
    said = "" if killed else (died.stdout + died.stderr).strip()[-300:]
    return KillOutcome(step, killed, resumed, identical, stray, died.returncode, said)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


def _kill_points(cmd: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 every: bool) -> list[KillOutcome]:
    reference = tmp_path / "reference"
    steps = count_steps(writer_argv(world, cmd, reference), monkeypatch)
    assert steps >= 5
    # every step, or two: half-way, and inside the final clean-up (one code path for the three
    # commands, stores.run: embed, whose kills cost the most, is killed half-way only)
    few = {steps // 2} if cmd == "embed" else {steps // 2, steps - 1}
    points = range(1, steps + 1) if every else sorted(few)
    outcomes = []
    for step in points:
        out = tmp_path / f"killed-{step}"
        outcomes.append(kill_and_resume(writer_argv(world, cmd, out), out, reference, step))
    return outcomes


def _assert_all_good(outcomes: list[KillOutcome]) -> None:
    for o in outcomes:
        assert o.killed, f"step {o.step}: the run was not killed (exit {o.exit}: {o.said})"
        assert o.resumed, f"step {o.step}: the rerun did not finish the store"
        assert o.identical, f"step {o.step}: not byte-identical to an uninterrupted run"
        assert not o.stray, f"step {o.step}: left behind {o.stray}"


@pytest.mark.parametrize("cmd", ["embed", "match", "export"])
def test_killed_runs_resume_to_the_same_files(cmd: str, world: World, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_all_good(_kill_points(cmd, world, tmp_path, monkeypatch, every=False))


@pytest.mark.slow  # one process per step (~30 per command)
@pytest.mark.parametrize("cmd", ["embed", "match", "export"])
def test_a_kill_at_every_step_resumes(cmd: str, world: World, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_all_good(_kill_points(cmd, world, tmp_path, monkeypatch, every=True))


def test_temporaries_of_a_killed_run_are_removed_and_nothing_else(world: World,
                                                                  tmp_path: Path) -> None:
    """A real kill -9 can land inside an atomic write: its ``.NAME.XXXXXXXX.tmp`` stays. The
    next run removes those (its own pattern only) and keeps a user's look-alikes outside OUT."""
    out = tmp_path / "out"
    died = run_pairmine(writer_argv(world, "match", out), env={"PAIRMINE_FAULT": "after:3"})
    assert died.returncode == KILLED
    (out / "pairs").mkdir(exist_ok=True)
    planted = [out / "pairs" / ".pairs-00003.parquet.ab12cd34.tmp", out / ".subset.parquet.x_9"
               "zzzzz.tmp", out / ".partial" / ".block-00002.json.0123abcd.tmp"]
    for p in planted:
        p.write_bytes(b"half a file")
    beside = tmp_path / ".pairs-00000.parquet.ab12cd34.tmp"
    beside.write_bytes(b"not ours")
    code, output = run_cli(writer_argv(world, "match", out))
    assert code == 0, output
    assert not any(p.exists() for p in planted)
    assert beside.exists()
    assert not [p for p in store_files(out) if p.endswith(".tmp") or ".partial" in p
                or p.endswith(".lock")]


def test_the_hook_is_off_unless_asked() -> None:
    from pairmine.stores import atomic

    assert atomic._fault_limit("") is None
    assert atomic._fault_limit("after:7") == 7
    assert atomic._fault_limit("after:0") is None
    assert atomic._fault_limit("stop-after-lock") is None
    assert atomic._fault_limit("sometimes") is None
