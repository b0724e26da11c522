"""The lazy stores: an embeddings store opens by its manifest and reads rows, metadata and
content codes per shard (memory independent of its row count); format version 1 still opens;
content codes and ``same_content``; a store being written says who writes it; a kill after the
manifest leaves nothing behind for good; running out of memory is one line, never "damaged"."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pairmine import stores
from pairmine.errors import OutOfMemory, StoreError, memory_step


def _meta(id_start: int, rows: int, hashes: list[str | None] | None = None) -> pa.Table:
    ids = range(id_start, id_start + rows)
    return pa.table({
        "id": pa.array(ids, pa.int64()), "key": [f"k{i}" for i in ids],
        "source": [f"/src/{i}.jpg" for i in ids], "member": pa.nulls(rows, pa.string()),
        "label": pa.array([i % 3 for i in ids], pa.int64()),
        "sha256": hashes if hashes is not None else [f"{i:064x}" for i in ids],
    }, schema=stores.META_SCHEMA())


def write_store(root: Path, shard_rows: list[int], dim: int = 4, *, version: int = 2,
                hashes: list[str | None] | None = None, seed: int = 0) -> Path:
    """An embeddings store of shards of ``shard_rows`` rows, written by the one shard writer;
    ``version=1`` drops the codes files and records (a store of the earlier format)."""
    rng = np.random.default_rng(seed)
    records = []
    start = 0
    for k, rows in enumerate(shard_rows):
        vec = rng.standard_normal((rows, dim)).astype(np.float16)
        part = hashes[start:start + rows] if hashes is not None else None
        shard = stores.write_embedding_shard(root, k, vec, _meta(start, rows, part),
                                             id_start=start)
        record = shard.to_json()
        if version == 1:
            (root / record.pop("codes")).unlink()
        records.append(record)
        start += rows
    if version == 1 and (root / stores.CODES_DIR).exists():
        (root / stores.CODES_DIR).rmdir()
    manifest = {"format": stores.EMBEDDINGS_FORMAT, "count": start, "dim": dim,
                "dtype": "float16", "shards": records}
    stores.finish_store(root, manifest)
    if version == 1:
        written = json.loads((root / stores.MANIFEST).read_text())
        written["version"] = 1
        (root / stores.MANIFEST).write_text(json.dumps(written))
    return root


def whole(root: Path) -> tuple[np.ndarray, pa.Table]:
    """The rows and metadata read file by file, the way the store used to open."""
    import pyarrow.parquet as pq

    man = json.loads((root / stores.MANIFEST).read_text())
    vec = np.concatenate([np.load(root / s["emb"]) for s in man["shards"]])
    meta = pa.concat_tables([pq.read_table(root / s["meta"]) for s in man["shards"]])
    return vec, meta


# ---------------------------------------------------------------------------------------------
# rows, metadata, codes


def test_rows_by_range_and_by_id_across_shards(tmp_path: Path) -> None:
    root = write_store(tmp_path / "e", [5, 0, 7, 3])
    store = stores.open_embeddings(root)
    vec, _ = whole(root)
    view = store.vectors
    assert view.shape == (15, 4) and view.dtype == np.float16 and len(view) == 15
    assert view.ndim == 2 and len(store) == 15 and store.dim == 4
    for a, b in [(0, 15), (3, 9), (5, 12), (4, 5), (12, 15), (7, 7), (-4, None), (0, 100)]:
        np.testing.assert_array_equal(np.asarray(view[a:b]), vec[a:b])
    np.testing.assert_array_equal(view[2:14:3], vec[2:14:3])
    ids = np.array([14, 0, 6, 6, -1, 4, 5], dtype=np.int64)
    np.testing.assert_array_equal(view[ids], vec[ids])
    np.testing.assert_array_equal(view[[3, 12]], vec[[3, 12]])
    mask = np.zeros(15, dtype=bool)
    mask[[1, 8, 13]] = True
    np.testing.assert_array_equal(view[mask], vec[mask])
    np.testing.assert_array_equal(view[9], vec[9])
    np.testing.assert_array_equal(view[3:10, 1:3], vec[3:10, 1:3])
    np.testing.assert_array_equal(np.asarray(view), vec)
    np.testing.assert_array_equal(view.astype(np.float32), vec.astype(np.float32))
    assert view[np.zeros(0, np.int64)].shape == (0, 4)
    with pytest.raises(IndexError):
        view[np.array([15])]
    with pytest.raises(IndexError):
        view[15]


def test_take_keeps_the_order_of_ids_and_reads_only_the_columns(tmp_path: Path) -> None:
    root = write_store(tmp_path / "e", [4, 4, 4])
    store = stores.open_embeddings(root)
    _, meta = whole(root)
    ids = [11, 0, 5, 5, 3, 8]
    got = store.take(ids, ["key", "label"])
    assert got.column_names == ["key", "label"]
    assert got.column("key").to_pylist() == [meta.column("key")[i].as_py() for i in ids]
    assert store.take(np.array([2, 1]), None).column_names == meta.column_names
    assert store.take([], ["key"]).num_rows == 0
    starts = [start for start, _ in store.iter_meta(["id"])]
    assert starts == [0, 4, 8]
    joined = pa.concat_tables([t for _, t in store.iter_meta(["id", "key"])])
    assert joined.column("id").to_pylist() == list(range(12))
    assert store.meta.equals(meta)  # the whole table (small stores only)
    with pytest.raises(StoreError, match="no metadata column"):
        store.take([0], ["colour"])


def test_codes_are_the_first_eight_bytes_of_the_hash(tmp_path: Path) -> None:
    digests: list[str | None] = [f"{i:016x}" + "5" * 48 for i in range(6)]
    digests[2] = "ab" * 32
    digests[4] = digests[2]  # the same content twice
    digests[5] = None  # no hash
    root = write_store(tmp_path / "e", [3, 3], hashes=digests)
    store = stores.open_embeddings(root)
    codes = store.codes(np.arange(6))
    assert codes.dtype == np.uint64
    assert int(codes[2]) == int("ab" * 8, 16) == int(codes[4])
    assert int(codes[3]) == 3 and int(codes[5]) == 0
    assert int(codes[0]) == 1  # a hash whose first 8 bytes are 0 is not "no hash"
    on_disk = np.load(root / "codes" / "codes-00001.npy")
    np.testing.assert_array_equal(on_disk, codes[3:])
    assert [s for s, _ in store.iter_codes()] == [0, 3]
    same = store.same_content(np.array([2, 2, 0, 5, 5]), np.array([4, 3, 0, 5, 1]))
    assert same.tolist() == [True, False, True, False, False]  # no hash: never the same
    # codes of digests that are not hex (a test store's "h1") are still equal exactly when
    # the strings are
    assert stores.content_code("h1") == stores.content_code("h1") != stores.content_code("h2")
    np.testing.assert_array_equal(stores.content_code_array(["h1", None, "ab" * 32]),
                                  [stores.content_code("h1"), 0, int("ab" * 8, 16)])


def test_a_collision_of_codes_is_decided_by_the_full_hash(tmp_path: Path) -> None:
    digests: list[str | None] = ["aa" * 32, "aa" * 8 + "bb" * 24, "aa" * 32, "cc" * 32]
    root = write_store(tmp_path / "e", [2, 2], hashes=digests)
    store = stores.open_embeddings(root)
    # rows 0 and 1 share their first 8 bytes: equal codes, different content
    assert store.codes([0])[0] == store.codes([1])[0]
    # and a hand-made codes file can make any two rows collide
    np.save(root / "codes" / "codes-00001.npy", np.array([int("aa" * 8, 16)] * 2, np.uint64))
    store = stores.open_embeddings(root)
    assert store.codes([3])[0] == store.codes([0])[0]
    assert store.same_content([0, 0, 0, 1], [1, 3, 2, 1]).tolist() == [False, False, True, True]


def test_a_version_1_store_opens_and_computes_its_codes(tmp_path: Path) -> None:
    hashes: list[str | None] = [f"{i % 4:064x}" for i in range(1, 21)]
    v2 = stores.open_embeddings(write_store(tmp_path / "v2", [7, 7, 6], hashes=hashes))
    v1_root = write_store(tmp_path / "v1", [7, 7, 6], version=1, hashes=hashes)
    assert json.loads((v1_root / stores.MANIFEST).read_text())["version"] == 1
    assert not (v1_root / stores.CODES_DIR).exists()
    v1 = stores.open_embeddings(v1_root)
    assert all(s.codes is None for s in v1.info.shards)
    ids = np.arange(20)
    np.testing.assert_array_equal(v1.codes(ids), v2.codes(ids))
    for (s1, c1), (s2, c2) in zip(v1.iter_codes(), v2.iter_codes(), strict=True):
        assert s1 == s2 and np.array_equal(c1, c2)
    a, b = np.repeat(ids, 20), np.tile(ids, 20)
    np.testing.assert_array_equal(v1.same_content(a, b), v2.same_content(a, b))
    np.testing.assert_array_equal(v1.vectors[3:17], v2.vectors[3:17])
    assert v2.manifest["version"] == 2 == stores.format_version(stores.EMBEDDINGS_FORMAT)
    assert stores.format_version(stores.PAIRS_FORMAT) == 1


def test_damage_is_found_when_the_shard_is_first_read(tmp_path: Path) -> None:
    root = write_store(tmp_path / "e", [3, 3])
    np.save(root / "codes" / "codes-00001.npy", np.zeros(2, np.uint64))
    (root / "meta" / "meta-00001.parquet").write_bytes(b"not parquet")
    store = stores.open_embeddings(root)  # the manifest is fine: it opens
    np.testing.assert_array_equal(store.vectors[0:3], np.load(root / "emb" / "emb-00000.npy"))
    with pytest.raises(StoreError, match=r"codes/codes-00001.npy: uint64 \(2,\), the "
                       r"manifest says uint64 \(3,\)"):
        store.codes([4])
    with pytest.raises(StoreError, match=r"meta/meta-00001\.parquet: not a Parquet file"):
        store.take([4], ["key"])


def test_the_shard_writer_refuses_what_is_not_a_shard(tmp_path: Path) -> None:
    vec = np.zeros((3, 4), np.float16)
    with pytest.raises(ValueError, match="2 metadata rows for 3 vectors"):
        stores.write_embedding_shard(tmp_path, 0, vec, _meta(0, 2))
    with pytest.raises(ValueError, match="no column sha256"):
        stores.write_embedding_shard(tmp_path, 0, vec, _meta(0, 3).drop_columns(["sha256"]))
    with pytest.raises(ValueError, match="float16/float32 matrix"):
        stores.write_embedding_shard(tmp_path, 0, vec.astype(np.int8), _meta(0, 3))
    assert not any(tmp_path.rglob("*.npy"))  # nothing was written
    shard = stores.write_embedding_shard(tmp_path, 7, vec, _meta(0, 3), id_start=40)
    assert shard.to_json() == {"emb": "emb/emb-00007.npy", "meta": "meta/meta-00007.parquet",
                               "codes": "codes/codes-00007.npy", "rows": 3, "id_start": 40}


def test_reading_every_row_copies_only_when_asked(tmp_path: Path) -> None:
    store = stores.open_embeddings(write_store(tmp_path / "e", [6]))
    mapped = np.asarray(store.vectors)  # one shard: its memory map, read-only
    assert not mapped.flags.writeable
    copied = np.array(store.vectors, copy=True)
    assert copied.flags.writeable and np.array_equal(copied, mapped)
    assert np.asarray(store.vectors, dtype=np.float32).dtype == np.float32


def test_a_store_pickles_as_its_path(tmp_path: Path) -> None:
    import pickle

    store = stores.open_embeddings(write_store(tmp_path / "e", [3, 3]))
    store.vectors[0:6]
    copy = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 4000
    np.testing.assert_array_equal(copy.vectors[1:5], store.vectors[1:5])


# ---------------------------------------------------------------------------------------------
# memory independent of the row count


_MEASURE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from pairmine import stores

    def anon_kib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    store = stores.open_embeddings(sys.argv[1])
    n = len(store)
    rng = np.random.default_rng(0)
    a = rng.integers(0, n, 200)
    if sys.argv[2] == "rows":
        out = {"start": anon_kib()}
        store = stores.open_embeddings(sys.argv[1])
        out["open"] = anon_kib()
        block = np.asarray(store.vectors[n // 2 - 20:n // 2 + 20], dtype=np.float32)
        out["block"] = anon_kib()
        total = 0
        for _, codes in store.iter_codes():
            total += int((codes == 0).sum())
        out["codes"] = anon_kib()
    else:
        # once before measuring: Arrow's first read starts its thread pools and imports
        store.same_content(a[:1], a[:1])
        out = {"start": anon_kib()}
        store.take(a, ["key", "sha256"])
        out["take"] = anon_kib()
        store.same_content(a, a)
        out["same_content"] = anon_kib()
    print(json.dumps(out))
""")


def _anon_steps(root: Path, what: str) -> dict[str, int]:
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(root), what],
                         capture_output=True, text=True, check=True, timeout=120)
    steps: dict[str, int] = json.loads(run.stdout.strip().splitlines()[-1])
    return steps


def _fast_store(root: Path, shards: int, rows: int, dim: int = 4) -> Path:
    """A v2 store of ``shards`` x ``rows`` rows written straight to its files (the shard writer
    fsyncs every file: too slow for 600 files in a unit test)."""
    import pyarrow.parquet as pq

    for d in (stores.EMB_DIR, stores.META_DIR, stores.CODES_DIR):
        (root / d).mkdir(parents=True, exist_ok=True)
    records = []
    vec = np.full((rows, dim), 0.5, dtype=np.float16)
    for k in range(shards):
        start = k * rows
        emb, meta, codes = stores.embedding_shard_files(k)
        np.save(root / emb, vec)
        table = _meta(start, rows)
        np.save(root / codes, stores.content_code_array(table.column("sha256")))
        pq.write_table(table, root / meta)
        records.append({"emb": emb, "meta": meta, "codes": codes, "rows": rows,
                        "id_start": start})
    stores.finish_store(root, {"format": stores.EMBEDDINGS_FORMAT, "count": shards * rows,
                               "dim": dim, "dtype": "float16", "shards": records})
    return root


def _growth(small: dict[str, int], large: dict[str, int], step: str) -> int:
    return (large[step] - large["start"]) - (small[step] - small["start"])


def test_a_200_shard_store_opens_in_memory_independent_of_its_rows(tmp_path: Path) -> None:
    """Open, read one block of rows, iterate every shard's codes: RssAnon (anonymous memory,
    not the page cache of the mapped files) at 200 x 50 rows and at 200 x 3,000 rows differs
    by less than 2 MiB at every step."""
    small = _anon_steps(_fast_store(tmp_path / "small", 200, 50), "rows")
    large = _anon_steps(_fast_store(tmp_path / "large", 200, 3000), "rows")
    for step in ("open", "block", "codes"):
        assert _growth(small, large, step) < 2048, (step, small, large)


def test_take_and_same_content_hold_memory_independent_of_the_shard_count(
        tmp_path: Path) -> None:
    """Metadata and full hashes are read one shard at a time, so what ``take`` and
    ``same_content`` hold grows with a shard, not with the store: 25 and 250 shards of 200
    rows differ by less than 2 MiB."""
    small = _anon_steps(_fast_store(tmp_path / "small", 25, 200), "meta")
    large = _anon_steps(_fast_store(tmp_path / "large", 250, 200), "meta")
    for step in ("take", "same_content"):
        assert _growth(small, large, step) < 2048, (step, small, large)


# ---------------------------------------------------------------------------------------------
# a store being written; a kill after the manifest


def test_a_reader_names_the_writer_of_a_store_being_written(tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    with stores.begin_run(out, stores.PAIRS_FORMAT, {"x": 1}, overwrite=False):
        with pytest.raises(StoreError) as err:
            stores.open_pairs(out)
        text = str(err.value)
        assert text.startswith(f"store {out} is being written by pid {os.getpid()} on "
                               f"{socket.gethostname()}, started 20"), text
        assert "wait for it to finish" in text and "\n" not in text
    # nobody holds it any more: the unfinished store is what it is
    with pytest.raises(StoreError, match="incomplete"):
        stores.open_pairs(out)


def test_asking_who_writes_never_refuses_a_writer(tmp_path: Path) -> None:
    import fcntl
    import threading

    out = tmp_path / "pairs"
    stores.begin_run(out, stores.PAIRS_FORMAT, {}, overwrite=False).close()
    (out / stores.LOCK_FILE).write_text("")
    fd = os.open(out / stores.LOCK_FILE, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a reader's probe, held far longer than a probe is
    timer = threading.Timer(0.15, lambda: os.close(fd))
    timer.start()
    try:
        with stores.begin_run(out, stores.PAIRS_FORMAT, {}, overwrite=False) as run:
            assert run.resumed
    finally:
        timer.join()


def test_leftovers_of_a_kill_after_the_manifest_go_with_the_next_writer(tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    stores.begin_run(out, stores.PAIRS_FORMAT, {"x": 1}, overwrite=False).finish({"n": 1})
    # killed after the manifest, half-way through removing the work folder, lock unreleased
    (out / stores.FINISHING_DIR / "blocks").mkdir(parents=True)
    for i in range(3):
        (out / stores.FINISHING_DIR / "blocks" / f"pairs-{i:05d}.parquet").write_bytes(b"x")
    (out / stores.LOCK_FILE).write_text("pid 999999 on gone, started 2026-12-07 00:00:00 UTC\n")
    assert stores.read_manifest(out, stores.PAIRS_FORMAT)["n"] == 1  # complete: readable
    with pytest.raises(StoreError, match="already holds a complete store"):
        stores.begin_run(out, stores.PAIRS_FORMAT, {"x": 1}, overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == [stores.MANIFEST]


# ---------------------------------------------------------------------------------------------
# out of memory


def test_memory_step_names_the_step_and_what_lowers_it() -> None:
    with pytest.raises(OutOfMemory) as err, memory_step("match: reading tile rows",
                                                        "lower --block-rows"):
        raise MemoryError
    assert str(err.value) == "ran out of memory in match: reading tile rows (lower --block-rows)"
    with pytest.raises(OutOfMemory), memory_step("export"):
        raise pa.ArrowMemoryError("malloc of size 64 failed")
    with pytest.raises(OutOfMemory), memory_step("export"):
        np.zeros((1 << 62,), dtype=np.uint8)  # numpy's _ArrayMemoryError
    with pytest.raises(ValueError), memory_step("export"):  # anything else passes unchanged
        raise ValueError("x")

    @memory_step("a decorated step")
    def step() -> None:
        raise MemoryError

    with pytest.raises(OutOfMemory, match="a decorated step"):
        step()


@pytest.mark.parametrize("failure", [
    pa.ArrowMemoryError("realloc of size 1048576 failed"),
    OSError("realloc of size 1048576 failed"),
    MemoryError(),
])
def test_an_allocation_failure_is_never_a_damaged_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception) -> None:
    import pyarrow.parquet as pq

    root = write_store(tmp_path / "e", [3, 3])

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise failure

    store = stores.open_embeddings(root)
    monkeypatch.setattr(pq.ParquetFile, "read", fails)
    with pytest.raises(OutOfMemory, match=r"ran out of memory in reading .*meta-00000.parquet"):
        store.take([1], ["key"])
    monkeypatch.setattr(np, "load", fails)
    with pytest.raises(OutOfMemory, match=r"emb-00000\.npy"):
        store.vectors[0:2]


def test_pair_shards_are_read_one_at_a_time_and_oom_is_not_damage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "pairs"
    run = stores.begin_run(out, stores.PAIRS_FORMAT, {}, overwrite=False)
    names = []
    for k in range(3):
        name = f"{stores.PAIRS_DIR}/{stores.shard_name('pairs', k, '.parquet')}"
        stores.write_parquet_atomic(out / name, pa.table(
            {"a": pa.array([k], pa.int64()), "b": pa.array([k + 1], pa.int64()),
             "score": pa.array([0.98], pa.float32())}, schema=stores.PAIRS_SCHEMA()))
        names.append(name)
    stores.write_parquet_atomic(out / stores.SUBSET_FILE, pa.table({"id": pa.array(
        range(4), pa.int64())}))
    run.finish({"min": 0.97, "max": 0.99, "shards": names,
                "subset": {"count": 4, "of": 4, "seed": 0},
                "inputs": {"embeddings": {"path": str(tmp_path / "emb")}}})
    pairs = stores.open_pairs(out)
    assert [t.column("a").to_pylist() for t in pairs.iter_shards()] == [[0], [1], [2]]
    assert pairs.table.num_rows == 3 and pairs.subset_ids().tolist() == [0, 1, 2, 3]

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise pa.ArrowMemoryError("realloc of size 1048576 failed")

    monkeypatch.setattr(pq, "read_table", fails)
    with pytest.raises(OutOfMemory, match=r"pairs-00000\.parquet"):
        next(stores.open_pairs(out).iter_shards())


@pytest.mark.parametrize(("command", "module", "function"), [
    ("embed", "pairmine.embed", "embed"), ("match", "pairmine.match", "match"),
    ("export", "pairmine.export", "export"), ("verify", "pairmine.export", "verify"),
])
def test_a_memory_error_in_any_stage_is_one_line_and_exit_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, module: str,
        function: str) -> None:
    import importlib

    from click.testing import CliRunner

    from pairmine.cli import cli

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        np.zeros((1 << 62,), dtype=np.uint8)  # numpy's _ArrayMemoryError, a MemoryError

    monkeypatch.setattr(importlib.import_module(module), function, out_of_memory)
    src = tmp_path / "in"
    src.mkdir()
    args = {"embed": [str(src), str(tmp_path / "out"), "--encoder", "toy:0"],
            "match": [str(src), str(tmp_path / "out")],
            "export": [str(src), str(tmp_path / "out")],
            "verify": [str(src)]}[command]
    result = CliRunner().invoke(cli, [command, *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"Error: ran out of memory in pairmine {command} (give the process more "
                     "memory, or lower the sizes of the step (--block-rows, --batch-size, "
                     "workers per node))"], result.output
    assert "Traceback" not in result.output
