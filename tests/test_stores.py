"""The store contract in isolation: the lock, the run identity, stale temporaries, the
crash-safe finish, damaged stores, write failures and the one subset draw."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pairmine import stores
from pairmine.errors import ConfigError, StoreError

FMT = stores.PAIRS_FORMAT


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with stores.begin_run(out, FMT, {"config": {"a": 1}}, overwrite=False):
        # another process: flock is per open file, so a second begin_run in a child must fail
        code = ("import sys; from pairmine import stores\n"
                "try:\n"
                f"    stores.begin_run({str(out)!r}, {FMT!r}, {{}}, overwrite=False)\n"
                "except stores.StoreError as e:\n"
                "    print(e); sys.exit(3)\n")
        child = subprocess.run([sys.executable, "-c", code.replace("stores.StoreError",
                                                                   "Exception")],
                               capture_output=True, text=True, timeout=60, check=False)
        assert child.returncode == 3, child.stderr
        import os
        assert f"is being written by another pairmine process (pid {os.getpid()} on" in \
            child.stdout
    assert not (out / stores.LOCK_FILE).exists()  # released and removed


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = (f"from pairmine import stores; import os\n"
            f"stores.begin_run({str(out)!r}, {FMT!r}, {{}}, overwrite=False)\n"
            f"os._exit(0)  # like kill -9: nothing is cleaned up\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (out / stores.LOCK_FILE).exists()  # the file stays behind, the lock does not
    with stores.begin_run(out, FMT, {}, overwrite=False) as run:
        assert run.resumed  # the identity file was written: the run is resumed, not refused


def test_identity_decides_resume_and_names_what_differs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stores.begin_run(out, FMT, {"config": {"min": 0.9, "seed": 0}}, overwrite=False).close()
    with stores.begin_run(out, FMT, {"config": {"min": 0.9, "seed": 0}},
                          overwrite=False) as run:
        assert run.resumed
    with pytest.raises(StoreError, match=r"differs in: config\.min\)"):
        stores.begin_run(out, FMT, {"config": {"min": 0.95, "seed": 0}}, overwrite=False)
    with pytest.raises(StoreError, match=r"differs in: format"):
        stores.begin_run(out, stores.EMBEDDINGS_FORMAT, {"config": {"min": 0.9, "seed": 0}},
                         overwrite=False)
    with stores.begin_run(out, FMT, {"config": {"min": 0.95}}, overwrite=True) as run:
        assert not run.resumed


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stores.begin_run(out, FMT, {}, overwrite=False).close()
    (out / "pairs").mkdir()
    stale = [out / "pairs" / ".pairs-00001.parquet.ab12cd_3.tmp",
             out / ".partial" / ".block-00002.json.zzzzzzzz.tmp"]
    kept = [out / "pairs" / "pairs-00000.parquet", out / "pairs" / "notes.tmp"]
    for p in stale + kept:
        p.write_bytes(b"x")
    with stores.begin_run(out, FMT, {}, overwrite=False) as run:
        assert run.resumed
    assert [p.exists() for p in stale] == [False, False]
    assert [p.exists() for p in kept] == [True, True]


def test_finish_is_crash_safe_at_every_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = stores.begin_run(out, FMT, {"x": 1}, overwrite=False)
    (run.partial / "work.json").write_text("{}")
    # killed after renaming the work folder aside, before the manifest: it resumes
    (out / stores.PARTIAL_DIR).rename(out / stores.FINISHING_DIR)
    run.lock.release()
    with pytest.raises(StoreError, match="incomplete"):
        stores.read_manifest(out, FMT)
    run = stores.begin_run(out, FMT, {"x": 1}, overwrite=False)
    assert run.resumed and (run.partial / "work.json").exists()
    run.finish({"n": 1})
    assert sorted(p.name for p in out.iterdir()) == [stores.MANIFEST]
    # killed while removing the folder after the manifest: complete, and the next run cleans up
    (out / stores.FINISHING_DIR / "blocks").mkdir(parents=True)
    assert stores.read_manifest(out, FMT)["n"] == 1
    with pytest.raises(StoreError, match="already holds a complete store"):
        stores.begin_run(out, FMT, {"x": 1}, overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == [stores.MANIFEST]


def test_a_foreign_directory_is_never_touched(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not a pairmine store"):
            stores.begin_run(out, FMT, {}, overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def _embeddings(root: Path, n: int = 6, dim: int = 4) -> Path:
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(n, dim)).astype(np.float16)
    stores.save_npy_atomic(root / "emb" / "emb-00000.npy", vec)
    meta = pa.table({"id": pa.array(range(n), pa.int64()), "key": [f"k{i}" for i in range(n)],
                     "source": ["s"] * n, "member": pa.nulls(n, pa.string()),
                     "label": pa.nulls(n, pa.int64()), "sha256": [f"h{i}" for i in range(n)]},
                    schema=stores.META_SCHEMA())
    stores.write_parquet_atomic(root / "meta" / "meta-00000.parquet", meta)
    stores.finish_store(root, {"format": stores.EMBEDDINGS_FORMAT, "count": n, "dim": dim,
                               "dtype": "float16", "shards": [
                                   {"emb": "emb/emb-00000.npy", "meta": "meta/meta-00000.parquet",
                                    "rows": n, "id_start": 0}]})
    return root


@pytest.mark.parametrize(("damage", "message"), [
    ("manifest_bytes", "manifest.json: not JSON"),
    ("no_shards", "manifest.json: 'shards' is missing"),
    ("npy_bytes", "emb/emb-00000.npy: not a .npy file"),
    ("npy_object", "emb/emb-00000.npy: an object array (pickle)"),
    ("npy_shape", "emb/emb-00000.npy: float16 (5, 4), the manifest says float16 (6, 4)"),
    ("meta_bytes", "meta/meta-00000.parquet: not a Parquet file"),
    ("meta_missing", "meta/meta-00000.parquet: missing"),
])
def test_a_damaged_store_is_one_clear_error(tmp_path: Path, damage: str, message: str) -> None:
    store = _embeddings(tmp_path / "emb")
    rng = np.random.default_rng(1)
    manifest = store / "manifest.json"
    if damage == "manifest_bytes":
        manifest.write_bytes(rng.bytes(300))
    elif damage == "no_shards":
        m = json.loads(manifest.read_text())
        del m["shards"]
        manifest.write_text(json.dumps(m))
    elif damage == "npy_bytes":
        (store / "emb" / "emb-00000.npy").write_bytes(rng.bytes(500))
    elif damage == "npy_object":
        np.save(store / "emb" / "emb-00000.npy", np.array([{"a": 1}] * 6, dtype=object),
                allow_pickle=True)
    elif damage == "npy_shape":
        np.save(store / "emb" / "emb-00000.npy", np.zeros((5, 4), np.float16))
    elif damage == "meta_bytes":
        (store / "meta" / "meta-00000.parquet").write_bytes(rng.bytes(500))
    elif damage == "meta_missing":
        (store / "meta" / "meta-00000.parquet").unlink()
    with pytest.raises(StoreError) as err:
        # the manifest is checked on open, each shard's files when first read
        opened = stores.open_embeddings(store)
        opened.vectors[0:1]
        opened.take([0])
    text = str(err.value)
    assert f"store {store} is damaged: {message}" in text, text
    assert "re-create it with `pairmine embed SOURCE OUT --overwrite`" in text
    assert "\n" not in text


@pytest.mark.parametrize(("code", "words"), [
    (errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"), (None, "the disk is full")])
def test_write_failures_are_one_error(code: int | None, words: str) -> None:
    exc = OSError(code, "boom") if code is not None else OSError("32000 requested and 28640 "
                                                                  "written")
    err = stores.write_failure(Path("/x/emb-00000.npy"), exc)
    assert str(err).startswith(f"cannot write /x/emb-00000.npy: {words}")


def test_a_failed_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "t.bin"
    with pytest.raises(StoreError, match="the disk is full"), stores.atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("n", "fraction", "count"), [(5, 0.5, 3), (1, 0.1, 1), (9, 0.5, 5),
                                                      (10, 0.25, 3), (20, 1.0, 20)])
def test_one_subset_rule(n: int, fraction: float, count: int) -> None:
    ids = stores.draw_subset(n, fraction, seed=0)
    assert ids.shape == (count,) and ids.dtype == np.int64
    assert np.array_equal(ids, np.unique(ids)) and ids.max() < n
    assert np.array_equal(ids, stores.draw_subset(n, fraction, seed=0))


def test_subset_and_seed_validation() -> None:
    with pytest.raises(ConfigError, match="--seed -1 is not an integer >= 0"):
        stores.draw_subset(10, 0.5, seed=-1)
    with pytest.raises(ConfigError, match="larger than the store"):
        stores.draw_subset(10, 11, seed=0)
    assert stores.parse_subset("0.1") == 0.1 and stores.parse_subset("7") == 7
