"""Scale-out on Ray: stores written with ``--ray`` are byte-identical to single-machine ones,
whatever happens to the workers, the nodes or the driver.

One local Ray (2 CPUs, 2 fake GPUs; ``ray_cluster`` in conftest.py) serves the session; the
tests that need a cluster of their own (nodes removed, the driver killed) run it in a
subprocess, since a local ``ray.init`` and a ``ray.cluster_utils.Cluster`` cannot share a process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).parent))
from golden_pipeline import CHECKPOINT, data_hashes, golden_input

import pairmine
from pairmine.errors import ConfigError, InputError

# local clusters without a token, no usage reports (shared/notes/scale-out.md)
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
EMBED: dict[str, Any] = {"encoder": f"cifar-resnet:{CHECKPOINT}", "batch_size": 8, "shard_size": 16,
         "workers": 0, "device": "cpu", "precision": "fp32"}
MATCH: dict[str, Any] = {"min_score": 0.9, "max_score": 0.995, "block_rows": 4, "tile_rows": 8,
                         "device": "cpu"}
# a byte limit so that the export's sizing pass plans the shard cuts
EXPORT: dict[str, Any] = {"fmt": "webdataset", "combined": True, "shard_size": 20,
                          "max_shard_bytes": 60_000}


@pytest.fixture
def ray_local(ray_cluster: Path) -> Path:
    """The session's local Ray (tests/conftest.py); the file that arms the fault hook."""
    return ray_cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The single-machine stores (no Ray) every Ray run is compared with."""
    root = tmp_path_factory.mktemp("reference")
    images = golden_input(root)
    stores = {"images": images, "emb": root / "emb", "pairs": root / "pairs",
              "export": root / "export"}
    pairmine.embed(images, stores["emb"], **EMBED)
    pairmine.match(stores["emb"], stores["pairs"], **MATCH)
    pairmine.export(stores["pairs"], stores["export"], **EXPORT)
    return stores


def same_bytes(a: Path, b: Path) -> None:
    """Every data file of store ``b`` equals store ``a``'s (manifests hold timings)."""
    want, got = data_hashes({"s": a}), data_hashes({"s": b})
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []


def test_embed_on_a_ray_actor_is_byte_identical(ray_local: Path, reference: dict[str, Path],
                                               tmp_path: Path) -> None:
    out = tmp_path / "emb"
    result = pairmine.embed(reference["images"], out, **EMBED, ray="local", ray_workers=1)
    same_bytes(reference["emb"], out)
    assert result.cluster is not None and result.cluster["units_run"] == 4
    assert result.cluster["retried_units"] == []


@pytest.mark.slow  # three actors start (two GPUs, one restart), each importing torch: ~30 s
def test_embed_on_fake_gpus_is_byte_identical(fault: Path, reference: dict[str, Path],
                                              tmp_path: Path) -> None:
    # and the actor holding shard 2 dies after that shard's first batch: it is restarted
    # (the encoder loaded again) and the shard retried
    fault.write_text("embed:2")
    out = tmp_path / "emb"
    result = pairmine.embed(reference["images"], out, **EMBED, ray="local", ray_workers=2,
                            gpus_per_worker=1)
    same_bytes(reference["emb"], out)
    cluster = result.cluster
    assert cluster is not None and cluster["units_run"] == 4
    # one actor per GPU, each with its own CUDA_VISIBLE_DEVICES, shards on both
    assert sorted(cluster["units_per_gpu"]) == ["0", "1"]
    assert len(cluster["units_per_worker"]) >= 2
    assert cluster["retried_units"] == [2]


def test_match_on_ray_is_byte_identical(ray_local: Path,
                                                    reference: dict[str, Path],
                                                    tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    result = pairmine.match(reference["emb"], pairs, **MATCH, ray="local")
    same_bytes(reference["pairs"], pairs)
    assert result.cluster is not None
    assert result.cluster["units_run"] == result.tiles_run == result.tiles > 3
    assert result.pairs == pairmine.open_pairs(reference["pairs"]).manifest["counts"][
        "unordered"]


def test_export_on_ray_is_byte_identical(ray_local: Path, reference: dict[str, Path],
                                         tmp_path: Path) -> None:
    export = tmp_path / "export"
    done = pairmine.export(reference["pairs"], export, **EXPORT, ray="local")
    same_bytes(reference["export"], export)
    assert done.cluster is not None and done.cluster["units_run"] == done.shards > 1


@pytest.fixture
def fault(ray_local: Path) -> Iterator[Path]:
    yield ray_local
    ray_local.unlink(missing_ok=True)


def test_a_worker_killed_mid_unit_is_retried(fault: Path, reference: dict[str, Path],
                                             tmp_path: Path) -> None:
    fault.write_text("match:3")  # the first attempt of block 3 kills its worker (os._exit)
    out = tmp_path / "pairs"
    result = pairmine.match(reference["emb"], out, **MATCH, ray="local", max_retries=2)
    assert result.cluster is not None and result.cluster["retried_units"] == [3]
    same_bytes(reference["pairs"], out)


@pytest.mark.slow  # two runs on the cluster; the retry itself is tested just above
def test_retries_exhausted_is_one_clear_error(fault: Path, reference: dict[str, Path],
                                              tmp_path: Path) -> None:
    fault.write_text("match:0")
    with pytest.raises(pairmine.PairmineError, match="match tile 0 failed"):
        pairmine.match(reference["emb"], tmp_path / "pairs", **MATCH, ray="local",
                       max_retries=0)
    # the rerun (no fault) resumes the unfinished store into the same bytes
    fault.unlink()
    result = pairmine.match(reference["emb"], tmp_path / "pairs", **MATCH, ray="local")
    assert result.blocks_skipped >= 0 and result.cluster is not None
    same_bytes(reference["pairs"], tmp_path / "pairs")


def test_a_worker_of_another_pairmine_version_is_refused(ray_local: Path,
                                                         reference: dict[str, Path],
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # the workers import the installed pairmine; the driver now claims another version
    monkeypatch.setattr(pairmine.version, "__version__", "0.0.0+other")
    with pytest.raises(ConfigError, match=r"runs pairmine .*, the driver 0\.0\.0\+other"):
        pairmine.match(reference["emb"], tmp_path / "pairs", **MATCH, ray="local")
    assert not list((tmp_path / "pairs").glob("pairs/*.parquet"))  # no unit ran


def test_a_store_path_a_worker_cannot_see_is_named(ray_local: Path,
                                                   reference: dict[str, Path],
                                                   tmp_path: Path) -> None:
    # /proc/self/fd/N is this process's open directory; on a worker it is nothing: the same
    # situation as a path on a disk only the driver mounts
    fd = os.open(reference["emb"], os.O_RDONLY | os.O_DIRECTORY)
    high = os.dup2(fd, 917)
    os.close(fd)
    try:
        private = Path(f"/proc/self/fd/{high}")
        assert (private / "manifest.json").exists()
        with pytest.raises(InputError, match=rf"node .* cannot use the store path {private}"):
            pairmine.match(private, tmp_path / "pairs", **MATCH, ray="local")
    finally:
        os.close(high)


def test_an_unreachable_address_fails_fast(reference: dict[str, Path],
                                           tmp_path: Path) -> None:
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pairmine", "match", str(reference["emb"]),
                          str(tmp_path / "pairs"), "--ray", "127.0.0.1:9"],
                         capture_output=True, text=True, env={**os.environ, **RAY_ENV},
                         timeout=60)
    assert run.returncode == 1, run.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in run.stderr
    assert "Traceback" not in run.stderr
    assert time.perf_counter() - t < 30  # a Python start and imports; Ray would retry a minute
    assert not (tmp_path / "pairs").exists()  # refused before the output is touched


def test_plan_is_a_dry_run(reference: dict[str, Path], tmp_path: Path) -> None:
    result = pairmine.match(reference["emb"], tmp_path / "pairs", **MATCH, dry_run=True)
    plan = result.unit_plan
    assert plan is not None and plan["blocks"] == 15 and plan["todo"] == list(range(15))
    assert plan["tiles"] == plan["tiles_todo"] == len(plan["bytes_per_tile"]) > 1
    assert plan["comparisons_per_second"] > 0 and plan["estimate_seconds"] > 0
    assert not (tmp_path / "pairs").exists()


# ---------------------------------------------------------------------------------------------
# a cluster of its own, in a subprocess


NODE_LOSS = textwrap.dedent('''
    import json, sys, threading, time
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    import pairmine

    emb, out, match = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    result = {}
    run = threading.Thread(target=lambda: result.update(
        r=pairmine.match(emb, out, **match, ray="auto", ray_workers=2)))
    run.start()
    while run.is_alive() and len(list((out / "pairs").glob("pairs-*.parquet"))) < 2:
        time.sleep(0.02)
    removed_at = len(list((out / "pairs").glob("pairs-*.parquet")))
    cluster.remove_node(nodes[0])
    run.join()
    print("RESULT=" + json.dumps({"removed_at": removed_at, "tiles": result["r"].tiles,
                                  **result["r"].cluster}))
    ray.shutdown()
    cluster.shutdown()
''')


def _json_line(stdout: str) -> dict[str, Any]:
    line = [x for x in stdout.splitlines() if x.startswith("RESULT=")][-1]
    out: dict[str, Any] = json.loads(line.removeprefix("RESULT="))
    return out


@pytest.mark.slow
def test_a_node_removed_mid_run_completes_identically(reference: dict[str, Path],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    match = {**MATCH, "block_rows": 2}  # 30 blocks: the run is still going when a node goes
    run = subprocess.run([sys.executable, "-c", NODE_LOSS, str(reference["emb"]), str(out),
                          json.dumps(match)], capture_output=True, text=True,
                         env={**os.environ, **RAY_ENV}, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = _json_line(run.stdout)
    assert got["removed_at"] < 30  # the node went while units were left
    assert got["units_run"] == got["tiles"]
    pairmine.match(reference["emb"], tmp_path / "single", **match)
    same_bytes(tmp_path / "single", out)


@pytest.mark.slow
def test_driver_killed_mid_run_resumes_only_missing_units(ray_local: Path,
                                                          reference: dict[str, Path],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    cmd = [sys.executable, "-m", "pairmine", "match", str(reference["emb"]), str(out),
           "--min", "0.9", "--max", "0.995", "--block-rows", "2", "--tile-rows", "8",
           "--device", "cpu",
           "--ray", "local", "--ray-workers", "1"]
    # a session of its own: the driver and the local cluster it starts die together
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, **RAY_ENV}, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list((out / "pairs").glob("pairs-*.parquet"))) < 3:
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert not (out / "manifest.json").exists()  # killed mid-run, not after
    finished = len(list((out / "pairs").glob("pairs-*.parquet")))
    result = pairmine.match(reference["emb"], out, **{**MATCH, "block_rows": 2}, ray="local")
    assert finished >= 3 and result.tiles_run < result.tiles  # the finished tiles resumed
    assert result.cluster is not None
    assert result.cluster["units_run"] == result.tiles_run < result.tiles
    pairmine.match(reference["emb"], tmp_path / "single", **{**MATCH, "block_rows": 2})
    same_bytes(tmp_path / "single", out)


def test_help_and_the_single_machine_path_do_not_import_ray() -> None:
    code = ("import sys; from pairmine.cli import main\n"
            "for args in (['--help'], ['match', '--help'], ['embed', '--help']):\n"
            "    try:\n        main(args, standalone_mode=False)\n"
            "    except SystemExit:\n        pass\n"
            "print('RAY=' + str('ray' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "RAY=False"


def test_match_plan_command_prints_the_units(reference: dict[str, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pairmine.cli import cli

    res = CliRunner().invoke(cli, ["match", str(reference["emb"]), str(tmp_path / "pairs"),
                                    "--min", "0.9", "--max", "0.995", "--block-rows", "4",
                                    "--tile-rows", "8", "--device", "cpu", "--plan"])
    assert res.exit_code == 0, res.output
    assert "15 of 4 anchor rows" in res.output and "tiles (units)" in res.output
    assert "estimate" in res.output
    assert not (tmp_path / "pairs").exists()



# ---------------------------------------------------------------------------------------------
# the executor itself (pairmine.scale.executor): a unit function here and on Ray


def _scaled(payload: dict[str, int], unit: int) -> dict[str, Any]:
    """A unit function: what it computes, and the threads it was allowed."""
    from pairmine.runtime import cpu_count

    if unit == payload.get("fail_with_memory_error"):
        raise MemoryError("unable to allocate 8.0 GiB")
    return {"value": unit * payload["k"], "cpus": cpu_count(),
            "omp": os.environ.get("OMP_NUM_THREADS")}


class _Counter:
    """A stateful unit (built once per worker): how many units this instance ran."""

    def __init__(self, payload: dict[str, int]) -> None:
        self.k, self.seen = payload["k"], 0

    def __call__(self, unit: int) -> dict[str, Any]:
        self.seen += 1
        return {"value": unit * self.k, "seen": self.seen}


@pytest.fixture
def by_value() -> None:
    """Ray's workers cannot import this test module: ship its functions by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_the_executor_runs_units_here_and_on_ray_alike(ray_local: Path, by_value: None,
                                                       tmp_path: Path) -> None:
    from pairmine.scale.executor import execute
    from pairmine.scale.options import RayOptions

    here: dict[int, dict[str, Any]] = {}
    assert execute(range(6), _scaled, {"k": 3}, None, stage="test",
                   on_done=lambda u, r: here.__setitem__(u, r)) is None
    on_ray: dict[int, dict[str, Any]] = {}
    out = tmp_path / "out"
    out.mkdir()
    report = execute(range(6), _scaled, {"k": 3}, RayOptions("local", workers=2), stage="test",
                     on_done=lambda u, r: on_ray.__setitem__(u, r), write=out)
    assert report is not None and report.units == 6 and report.retried == []
    assert {u: r["value"] for u, r in on_ray.items()} == {u: r["value"]
                                                          for u, r in here.items()}
    # one CPU per task: one thread, whatever the machine has (cpu_count and OpenMP agree)
    assert {(r["threads"], r["cpus"], r["omp"]) for r in on_ray.values()} == {(1, 1, "1")}
    assert report.to_json()["threads_per_unit"] == {"1": 6}
    two = execute([0], _scaled, {"k": 1}, RayOptions("local", cpus_per_worker=2), stage="test",
                  on_done=lambda u, r: on_ray.__setitem__(u, r))
    assert two is not None and (on_ray[0]["threads"], on_ray[0]["cpus"]) == (2, 2)


def test_the_executor_builds_a_stateful_unit_once_per_worker(ray_local: Path, by_value: None
                                                             ) -> None:
    from pairmine.scale.executor import execute
    from pairmine.scale.options import RayOptions

    for options in (None, RayOptions("local", workers=1)):
        got: dict[int, dict[str, Any]] = {}
        execute(range(4), _Counter, {"k": 2}, options, stage="test", actor=True,
                on_done=got.__setitem__)
        assert {u: r["value"] for u, r in got.items()} == {0: 0, 1: 2, 2: 4, 3: 6}
        assert sorted(r["seen"] for r in got.values()) == [1, 2, 3, 4]  # one instance


def test_a_unit_out_of_memory_on_ray_is_diagnosed(ray_local: Path, by_value: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from pairmine.errors import OutOfMemory
    from pairmine.scale import executor
    from pairmine.scale.options import RayOptions

    # a MemoryError inside the unit, on a real worker
    with pytest.raises(OutOfMemory, match="export shard 2 ran out of memory") as raised:
        executor.execute(range(4), _scaled, {"k": 1, "fail_with_memory_error": 2},
                         RayOptions("local", workers=1, max_retries=0), stage="test",
                         unit_name="export shard", memory_hint="lower --max-shard-bytes")
    assert raised.value.hint == "lower --max-shard-bytes"
    # the worker killed by Ray's memory monitor, or by the kernel's OOM killer (seen in
    # /proc/vmstat during the run), retries exhausted: the diagnosis, never "rerun"
    failure = executor._Failure("match tile", executor.MEMORY_HINT)
    killed = failure.error(ray.exceptions.OutOfMemoryError("Task was killed due to the node "
                                                           "running low on memory."), 7)
    assert isinstance(killed, OutOfMemory)
    assert "match tile 7" in str(killed) and "out of memory" in str(killed)
    assert "--ray-workers" in str(killed) and "rerun" not in str(killed)
    monkeypatch.setattr(executor, "_oom_kills", lambda: (failure.oom_kills or 0) + 1)
    crashed = failure.error(ray.exceptions.WorkerCrashedError(), 7)
    assert isinstance(crashed, OutOfMemory) and "\n" not in crashed.message
    monkeypatch.setattr(executor, "_oom_kills", lambda: failure.oom_kills)
    other = failure.error(ray.exceptions.WorkerCrashedError(), 7)
    assert not isinstance(other, OutOfMemory) and "rerun" in str(other)
