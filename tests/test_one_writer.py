"""One writer per store (issue 12 §1): a second writer into an OUT that another pairmine process
is writing is refused with one line naming that process, exit 1, and the first run's store
ends exactly as an undisturbed run's. Deterministic (a writer stopped with the lock held, via
``PAIRMINE_FAULT=stop-after-lock``) and with simultaneous starts; a ``kill -9`` of the holder
never leaves a stale lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_input import (
    REPO,
    World,
    build_world,
    data_digests,
    one_error_line,
    run_cli,
    store_files,
)

# two bands of different widths over the world's scores (a random-weight network scores
# everything near 1): the two runs must write different stores
BANDS = {"low": ("--min", "0.994", "--max", "0.9995"),
         "high": ("--min", "0.996", "--max", "0.9995")}
BUSY = "is being written by another pairmine process (pid "
COMPLETE = "already holds a complete store"


def writer_argv(w: World, cmd: str, out: Path, variant: str) -> list[str]:
    """A writing command line; ``variant`` ("low"/"high") gives two different identities."""
    if cmd == "match":
        return ["match", str(w.emb), str(out), *BANDS[variant], "--block-rows", "5",
                "--device", "cpu"]
    if cmd == "embed":
        return ["embed", str(w.images), str(out), "--encoder", w.spec, "--workers", "0",
                "--device", "cpu", "--shard-size", "8" if variant == "low" else "11"]
    return ["export", str(w.pairs), str(out), "--shard-size", "20" if variant == "low" else "7"]


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pairmine", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_stopped(proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until ``proc`` has stopped itself (state T in /proc) with the lock held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, finish(proc)
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the writer never stopped after taking the lock")


def assert_refused(code: int, output: str, holder: int | None = None) -> str:
    assert code == 1, output
    line = one_error_line(output)
    assert BUSY in line or (holder is None and COMPLETE in line), line
    if holder is not None:
        assert f"pid {holder} on " in line, line
    return line


def assert_same_store(out: Path, reference: Path) -> None:
    """Every data file byte-identical to an undisturbed run's, and nothing else in OUT."""
    assert store_files(out) == store_files(reference)
    assert data_digests(out) == data_digests(reference)


def assert_band_holds(out: Path) -> None:
    """The pairs store agrees with itself: every pair's score in the manifest's band, as many
    pairs as the manifest counts, each score the dot product of the stored vectors."""
    import numpy as np

    from pairmine.stores import open_pairs, open_pairs_embeddings

    pairs = open_pairs(out)
    score = pairs.table.column("score").to_numpy()
    assert score.size == pairs.manifest["counts"]["unordered"] > 0
    assert (score >= np.float32(pairs.info.min)).all() and \
        (score <= np.float32(pairs.info.max)).all()
    vec = np.asarray(open_pairs_embeddings(pairs).vectors, dtype=np.float32)
    a, b = pairs.table.column("a").to_numpy(), pairs.table.column("b").to_numpy()
    np.testing.assert_allclose(np.einsum("ij,ij->i", vec[a], vec[b]), score, atol=1e-5)


def reference_store(w: World, cmd: str, variant: str) -> Path:
    """The store an undisturbed run writes (made once, in this process)."""
    ref = w.root / "reference" / f"{cmd}-{variant}"
    if not (ref / "manifest.json").exists():
        code, output = run_cli(writer_argv(w, cmd, ref, variant))
        assert code == 0, output
    return ref


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("cmd", ["match", pytest.param("embed", marks=pytest.mark.slow),
                                 pytest.param("export", marks=pytest.mark.slow)])
def test_second_writer_is_refused_while_the_first_holds_the_lock(cmd: str, world: World,
                                                                  tmp_path: Path) -> None:
    second_writer_refused(world, cmd, tmp_path / "out")


def second_writer_refused(world: World, cmd: str, out: Path) -> None:
    """The first writer stopped with the lock held; the second is refused; the first ends
    with the store an undisturbed run writes."""
    first = start(writer_argv(world, cmd, out, "low"), {"PAIRMINE_FAULT": "stop-after-lock"})
    try:
        wait_stopped(first)
        # inside the window the race used: OUT exists, nothing of the run written yet
        assert sorted(p.name for p in out.iterdir()) == [".pairmine.lock"]
        code, output = finish(start(writer_argv(world, cmd, out, "high")))
        assert_refused(code, output, holder=first.pid)
        assert sorted(p.name for p in out.iterdir()) == [".pairmine.lock"]
    finally:
        os.kill(first.pid, signal.SIGCONT)
    code, output = finish(first)
    assert code == 0, output
    assert_same_store(out, reference_store(world, cmd, "low"))
    if cmd == "match":
        assert_band_holds(out)


def test_kill_9_of_the_holder_leaves_no_stale_lock(world: World, tmp_path: Path) -> None:
    holder_killed_lock_gone(world, tmp_path / "out")


def holder_killed_lock_gone(world: World, out: Path) -> None:
    """A writer killed (SIGKILL) with the lock held: the next writer gets the lock."""
    first = start(writer_argv(world, "match", out, "low"), {"PAIRMINE_FAULT": "stop-after-lock"})
    wait_stopped(first)
    first.kill()  # SIGKILL: no clean-up of any kind
    first.wait()
    assert (out / ".pairmine.lock").exists()  # the file may stay; the lock went with the process
    code, output = finish(start(writer_argv(world, "match", out, "high")))
    assert code == 0, output
    assert_same_store(out, reference_store(world, "match", "high"))
    assert_band_holds(out)


# simultaneous starts: how many pairs of runs each test starts (the campaign starts more)
SIMULTANEOUS = {"match": 4, "embed": 1, "export": 2}


def race(w: World, cmd: str, out: Path) -> tuple[str, list[tuple[int, str]]]:
    """Start a "low" and a "high" writer into one new OUT at once; returns the winner's
    variant and both (exit code, output)."""
    out.mkdir()
    procs = {v: start(writer_argv(w, cmd, out, v)) for v in ("low", "high")}
    results = {v: finish(p) for v, p in procs.items()}
    winners = [v for v, (code, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    loser = next(v for v in results if v != winners[0])
    assert_refused(*results[loser])
    return winners[0], list(results.values())


@pytest.mark.slow  # a dozen processes, each importing torch: a minute on two cores
@pytest.mark.parametrize("cmd", list(SIMULTANEOUS))
def test_simultaneous_writers_one_wins_and_its_store_is_whole(cmd: str, world: World,
                                                               tmp_path: Path) -> None:
    for i in range(SIMULTANEOUS[cmd]):
        out = tmp_path / f"out{i}"
        winner, _ = race(world, cmd, out)
        assert_same_store(out, reference_store(world, cmd, winner))
        if cmd == "match":
            assert_band_holds(out)


def test_readers_need_no_lock(world: World, tmp_path: Path) -> None:
    """A complete store is read while a writer holds another store's lock, and a reader never
    creates a lock file in the store it reads."""
    out = tmp_path / "out"
    code, output = run_cli(writer_argv(world, "match", out, "low"))
    assert code == 0, output
    code, output = run_cli(["export", str(out), str(tmp_path / "spps")])
    assert code == 0, output
    code, output = run_cli(["verify", str(tmp_path / "spps")])
    assert code == 0, output
    assert not (out / ".pairmine.lock").exists()
    assert not (world.emb / ".pairmine.lock").exists()
