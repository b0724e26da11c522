"""`pairmine import` (issue 22 §8): precomputed embeddings from a clip-retrieval / LAION
folder, Parquet files with an embedding column (NeMo Curator) and a plain .npy with a keys
file become a normal embeddings store; rows keep the source's order; non-normalised rows are
refused in one line; a killed import resumes to the same bytes; match runs on the result."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_bad_input import one_error_line, run_cli, run_pairmine, store_files

import pairmine
from pairmine.errors import InputError
from pairmine.ingest import import_embeddings

DIM = 8


def unit_rows(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clip_retrieval(root: Path, sizes: list[int], *, images: Path | None = None,
                   scale: float = 1.0) -> tuple[np.ndarray, list[str]]:
    """img_emb/img_emb_N.npy (float16, as clip-retrieval writes) + metadata_N.parquet with
    image_path, caption, url and label; N unpadded so that name order is not number order.
    Returns the rows and keys in source order."""
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    rows, keys = [], []
    for n, size in enumerate(sizes):
        x = (unit_rows(size, seed=n) * scale).astype(np.float16)
        np.save(root / "img_emb" / f"img_emb_{n}.npy", x)
        names = [f"part{n}/{i:04d}" for i in range(size)]
        if images is not None:
            names = [str(images / f"{n}_{i}.jpg") for i in range(size)]
            for i, name in enumerate(names):
                Path(name).write_bytes(f"image {n} {i}".encode())
        pq.write_table(pa.table({
            "image_path": names, "caption": [f"a photo {i}" for i in range(size)],
            "url": [f"https://example.com/{n}/{i}.jpg" for i in range(size)],
            "label": pa.array([i % 3 for i in range(size)], pa.int32()),
        }), root / "metadata" / f"metadata_{n}.parquet")
        rows.append(x)
        keys += names
    return np.concatenate(rows), keys


def test_clip_retrieval_round_trip_in_numeric_file_order(tmp_path: Path) -> None:
    # 12 partitions: by name img_emb_10 sorts before img_emb_2; by number it comes after 9
    x, keys = clip_retrieval(tmp_path / "src", [5, 3, 4, 6, 2, 5, 3, 4, 1, 5, 7, 2])
    result = import_embeddings(tmp_path / "src", tmp_path / "emb", shard_size=4)
    assert (result.rows, result.dim, result.layout) == (len(keys), DIM, "clip-retrieval")
    emb = pairmine.open_embeddings(tmp_path / "emb")
    assert emb.vectors.dtype == np.float16 and emb.vectors.shape == x.shape
    np.testing.assert_array_equal(emb.vectors[0:len(emb)], x)  # float16 in, float16 stored
    table = emb.take(np.arange(len(emb)), ["id", "key", "label", "source"])
    assert table.column("key").to_pylist() == keys
    assert table.column("id").to_pylist() == list(range(len(keys)))
    assert table.column("label").to_pylist()[:5] == [0, 1, 2, 0, 1]
    assert table.column("source").null_count == len(keys)  # keys, not image files
    source = emb.manifest["source"]
    assert source["kind"] == "imported" and source["layout"] == "clip-retrieval"
    assert source["files"] == 12 and source["labelled_items"] == len(keys)


def test_parquet_layout_nemo_curator(tmp_path: Path) -> None:
    src = tmp_path / "nemo"
    src.mkdir()
    parts = {"part.2.parquet": (0, 6), "part.10.parquet": (1, 5), "part.1.parquet": (2, 4)}
    for name, (seed, n) in parts.items():
        x = unit_rows(n, seed)
        pq.write_table(pa.table({
            "id": [f"{name}-{i}" for i in range(n)],
            "embeddings": pa.array(list(x), pa.list_(pa.float32())),
        }), src / name, row_group_size=2)  # several row groups: read by range
    import_embeddings(src, tmp_path / "emb", shard_size=3, dtype="float32")
    emb = pairmine.open_embeddings(tmp_path / "emb")
    order = ["part.1.parquet", "part.2.parquet", "part.10.parquet"]  # natural order
    want = np.concatenate([unit_rows(parts[p][1], parts[p][0]) for p in order])
    np.testing.assert_array_equal(emb.vectors[0:len(emb)], want)
    keys = emb.take(np.arange(len(emb)), ["key"]).column("key").to_pylist()
    assert keys == [f"{p}-{i}" for p in order for i in range(parts[p][1])]


def test_npy_with_keys_files(tmp_path: Path) -> None:
    x = unit_rows(11, seed=3)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "keys.txt").write_text("".join(f"img-{i}\n" for i in range(11)))
    import_embeddings(tmp_path / "x.npy", tmp_path / "a", keys=tmp_path / "keys.txt",
                      shard_size=4, dtype="float32")
    a = pairmine.open_embeddings(tmp_path / "a")
    np.testing.assert_array_equal(a.vectors[0:11], x)
    assert a.take(np.arange(11), ["key"]).column("key").to_pylist() == \
        [f"img-{i}" for i in range(11)]
    # a CSV with a key and a label column, and no keys file at all
    (tmp_path / "keys.csv").write_text("name,label\n" + "".join(f"n{i},{i % 2}\n"
                                                             for i in range(11)))
    import_embeddings(tmp_path / "x.npy", tmp_path / "b", keys=tmp_path / "keys.csv",
                      key_column="name", shard_size=4)
    b = pairmine.open_embeddings(tmp_path / "b").take([0, 5, 10], ["key", "label"])
    assert b.to_pylist() == [{"key": "n0", "label": 0}, {"key": "n5", "label": 1},
                             {"key": "n10", "label": 0}]
    import_embeddings(tmp_path / "x.npy", tmp_path / "c")
    c = pairmine.open_embeddings(tmp_path / "c").take([10], ["key"]).column("key")
    assert c.to_pylist() == ["x.npy:10"]
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match="not row-aligned"):
        import_embeddings(tmp_path / "x.npy", tmp_path / "d", keys=tmp_path / "short.txt")


def test_not_normalised_is_refused_in_one_line(tmp_path: Path) -> None:
    clip_retrieval(tmp_path / "src", [4, 4], scale=1.0)
    x = np.load(tmp_path / "src" / "img_emb" / "img_emb_1.npy")
    x[2] *= 3
    np.save(tmp_path / "src" / "img_emb" / "img_emb_1.npy", x)
    code, output = run_cli(["import", str(tmp_path / "src"), str(tmp_path / "emb")])
    assert code == 1, output
    line = one_error_line(output)
    assert "row 2 of img_emb_1.npy (id 6)" in line and "norm 3" in line, line
    assert "--normalize" in line, line
    # --normalize makes them unit vectors (the others unchanged up to float16 rounding)
    code, output = run_cli(["import", str(tmp_path / "src"), str(tmp_path / "emb2"),
                            "--normalize"])
    assert code == 0, output
    emb = pairmine.open_embeddings(tmp_path / "emb2")
    norms = np.linalg.norm(emb.vectors[0:8].astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def test_nan_is_refused_even_with_normalize(tmp_path: Path) -> None:
    x = unit_rows(5, seed=1)
    x[3, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputError, match=r"row 3 of x.npy \(id 3\) holds NaN or inf"):
        import_embeddings(tmp_path / "x.npy", tmp_path / "emb", normalize=True)
    assert not (tmp_path / "emb" / "manifest.json").exists()


def test_unknown_source_and_bad_options_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hello")
    code, output = run_cli(["import", str(tmp_path / "notes.md"), str(tmp_path / "e")])
    assert code == 1 and "cannot tell the layout" in one_error_line(output)
    clip_retrieval(tmp_path / "src", [3])
    code, output = run_cli(["import", str(tmp_path / "src"), str(tmp_path / "e"),
                            "--key-column", "nope"])
    assert code == 1 and "no column 'nope'" in one_error_line(output)
    assert not (tmp_path / "e").exists()  # nothing written for a bad option


def test_killed_import_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    clip_retrieval(tmp_path / "src", [5, 7, 6, 4])
    argv = ["import", str(tmp_path / "src"), "{out}", "--shard-size", "5"]
    clean = tmp_path / "clean"
    assert run_cli([a.replace("{out}", str(clean)) for a in argv])[0] == 0
    killed = tmp_path / "killed"
    died = run_pairmine([a.replace("{out}", str(killed)) for a in argv],
                        env={"PAIRMINE_FAULT": "after:6"})
    assert died.returncode == 137, died.stderr
    assert not (killed / "manifest.json").exists()
    code, output = run_cli([a.replace("{out}", str(killed)) for a in argv])
    assert code == 0, output
    assert "resumed" in output
    assert store_files(killed) == store_files(clean)

    def digest(store: Path) -> dict[str, str]:
        return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(store.rglob("*")) if p.is_file()}

    assert digest(killed) == digest(clean)


def test_images_from_metadata_are_read_back_and_match_runs(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    clip_retrieval(tmp_path / "src", [4, 4], images=images)
    (images / "1_3.jpg").unlink()  # a file named in the metadata that is gone
    result = import_embeddings(tmp_path / "src", tmp_path / "emb")
    assert (result.images, result.images_missing) == (7, 1)
    emb = pairmine.open_embeddings(tmp_path / "emb")
    rows = emb.take([0, 7], ["source", "sha256"]).to_pylist()
    from pairmine.errors import SourceError
    from pairmine.sources import ref_reader

    read = ref_reader(emb.manifest["source"]["kind"])
    data, ext = read(rows[0]["source"], None)
    assert ext == "jpg" and hashlib.sha256(data).hexdigest() == rows[0]["sha256"]
    assert rows[1]["source"] is None
    with pytest.raises(SourceError, match="imported without an image file"):
        read(rows[1]["source"], None)
    errors = pq.read_table(tmp_path / "emb" / "errors.parquet").to_pylist()
    assert [e["source"] for e in errors] == [str(images / "1_3.jpg")]
    # the imported store is a normal store: match runs on it
    pairs = pairmine.match(tmp_path / "emb", tmp_path / "pairs", min_score=-1.0,
                           max_score=1.0, device="cpu")
    assert pairs.pairs == 8 * 7 // 2


def test_export_of_a_store_imported_without_images_is_one_line(tmp_path: Path) -> None:
    """No row names an image file: export says so once, up front, and writes nothing; rows
    whose file was missing at import (the others have theirs) are export problems like any
    missing source: listed, or left out with --skip-missing."""
    clip_retrieval(tmp_path / "src", [4, 4])  # image_path values are keys, not files
    import_embeddings(tmp_path / "src", tmp_path / "emb")
    pairmine.match(tmp_path / "emb", tmp_path / "pairs", min_score=-1.0, max_score=1.0,
                   device="cpu")
    for fmt in ("webdataset", "parquet"):
        code, output = run_cli(["export", str(tmp_path / "pairs"), str(tmp_path / fmt),
                                "--format", fmt, "--combined"])
        assert code == 1
        line = one_error_line(output)
        assert "imported without image files" in line and "--image-column" in line
        assert not (tmp_path / fmt).exists()
    # the report still draws its pages and says why the thumbnails are blank
    code, output = run_cli(["show", str(tmp_path / "pairs"), str(tmp_path / "report")])
    assert code == 0, output
    assert "name no image file" in " ".join(output.split()) and "--image-root" not in output
    assert (tmp_path / "report" / "index.html").is_file()

    images = tmp_path / "images"
    images.mkdir()
    clip_retrieval(tmp_path / "src2", [4, 4], images=images)
    (images / "1_3.jpg").unlink()  # row 7 has no image file
    import_embeddings(tmp_path / "src2", tmp_path / "emb2")
    pairmine.match(tmp_path / "emb2", tmp_path / "pairs2", min_score=-1.0, max_score=1.0,
                   device="cpu")
    code, output = run_cli(["export", str(tmp_path / "pairs2"), str(tmp_path / "out")])
    assert code == 1
    assert "part1/0003" in one_error_line(output) or "1_3" in one_error_line(output)
    code, output = run_cli(["export", str(tmp_path / "pairs2"), str(tmp_path / "out2"),
                            "--skip-missing"])
    assert code == 0, output
    assert pairmine.verify(tmp_path / "out2").pairs == 8 * 7 // 2 - 7
