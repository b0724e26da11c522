"""pairmine.datasets: the map-style and WebDataset training datasets over real exports, with a real
torchvision augmentation pipeline; and the two examples, run end to end on a tiny export."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from PIL import Image
from test_export import Stores, build_embeddings, build_pairs, make_stores, write_images
from torchvision.transforms import v2 as T

from pairmine import stores
from pairmine.datasets import SPPSDataset, ToViews, shard_urls, spps_webdataset
from pairmine.errors import StoreError
from pairmine.export import export

ROOT = Path(__file__).resolve().parents[1]
SIZE = 24


def augment() -> T.Compose:
    """MoCo-v2-style views."""
    return T.Compose([
        T.RandomResizedCrop(SIZE, scale=(0.2, 1.0), antialias=True),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomHorizontalFlip(),
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Stores, Path, Path]:
    """12 images (3 PNG), 15 pairs: a combined shard export and a combined parquet export.
    Built once: no test changes it."""
    tmp_path = tmp_path_factory.mktemp("exported")
    s = make_stores(tmp_path)
    shards = export(s.pairs, tmp_path / "wds", combined=True, shard_size=5).path
    table = export(s.pairs, tmp_path / "pq", fmt="parquet", combined=True).path
    return s, shards, table


def _meta(s: Stores) -> dict[str, list[Any]]:
    meta: dict[str, list[Any]] = stores.open_embeddings(s.emb).meta.to_pydict()
    return meta


# ---------------------------------------------------------------------------------------------
# map-style


@pytest.mark.parametrize("which", ["shards", "parquet"])
def test_map_style_items_are_two_views_and_a_target(exported: tuple[Stores, Path, Path],
                                                    which: str) -> None:
    s, shards, table = exported
    ds = SPPSDataset(shards if which == "shards" else table, augment())
    assert len(ds) == 27
    meta = _meta(s)
    pairs = images = 0
    for i in range(len(ds)):
        views, target = ds[i]
        assert len(views) == 2
        assert all(isinstance(v, torch.Tensor) and v.shape == (3, SIZE, SIZE) for v in views)
        info = ds.info(i)
        raw_a, raw_b = ds.raw(i)
        if info["kind"] == "pair":
            pairs += 1
            if which == "shards":
                a, b = info["a"], info["b"]
                assert raw_a == Path(str(meta["source"][a])).read_bytes()
                assert raw_b == Path(str(meta["source"][b])).read_bytes()
                assert target == meta["label"][a]
        else:
            images += 1
            assert raw_b is None
            first, second = ds.images(i)
            assert first is second  # two augmentations of the very same image
        assert isinstance(target, int) and 0 <= target < 3
    assert (pairs, images) == (15, 12)


def test_both_backends_serve_the_same_bytes(exported: tuple[Stores, Path, Path]) -> None:
    _, shards, table = exported
    by_shards = SPPSDataset(shards)
    by_table = SPPSDataset(table)
    def both(ds: SPPSDataset) -> list[tuple[bytes, bytes]]:
        return sorted((a, b or b"") for a, b in (ds.raw(i) for i in range(len(ds))))

    assert len(by_shards) == len(by_table) == 27
    assert both(by_shards) == both(by_table)


def test_the_reference_trainer_reads_the_items_outside_trainers_read(
        exported: tuple[Stores, Path, Path]) -> None:
    """One reader: pairmine.train's items of a --combined export are SPPSDataset's, image for
    image, in the same order (the trainer lists single images first, then the pairs, then
    each pair reversed)."""
    from pairmine.train.data import INSTANCE, SEMANTIC, open_train_data

    _, shards, _ = exported
    data = open_train_data(shards)
    trained = [(int(k), data.reader.read(int(a)), data.reader.read(int(b)))
               for k, a, b in zip(data.kind, data.a, data.b, strict=True)]
    images = SPPSDataset(shards, kinds=("image",))
    pairs = SPPSDataset(shards, kinds=("pair",))
    single = [(INSTANCE, raw, raw) for raw, _ in (images.raw(i) for i in range(len(images)))]
    forward = [(SEMANTIC, a, b) for a, b in (pairs.raw(i) for i in range(len(pairs)))]
    backward = [(SEMANTIC, b, a) for _, a, b in forward]
    assert trained == single + forward + backward
    assert data.describe()["images"] == 12 and data.describe()["pairs"] == 15


def test_kinds_select_pairs_or_images(exported: tuple[Stores, Path, Path]) -> None:
    _, shards, table = exported
    for path in (shards, table):
        assert len(SPPSDataset(path, kinds=("pair",))) == 15
        assert len(SPPSDataset(path, kinds=("image",))) == 12
    with pytest.raises(StoreError, match="unknown sample kinds"):
        SPPSDataset(shards, kinds=("triplet",))


def test_without_a_transform_views_are_pil_images(exported: tuple[Stores, Path, Path]) -> None:
    _, shards, _ = exported
    ds = SPPSDataset(shards, kinds=("pair",))
    views, _ = ds[0]
    assert all(isinstance(v, Image.Image) and v.mode == "RGB" for v in views)
    views, _ = ds[-1]
    assert len(views) == 2
    with pytest.raises(IndexError):
        ds[15]


def test_asymmetric_transforms(exported: tuple[Stores, Path, Path]) -> None:
    _, shards, _ = exported
    ds = SPPSDataset(shards, T.Compose([T.Resize((8, 8)), T.ToImage()]),
                     transform2=T.Compose([T.Resize((4, 4)), T.ToImage()]))
    views, _ = ds[0]
    assert views[0].shape == (3, 8, 8) and views[1].shape == (3, 4, 4)


def test_unlabelled_images_have_target_minus_one(tmp_path: Path) -> None:
    write_images(tmp_path / "flat", 6, classes=("",))
    emb = build_embeddings(tmp_path / "flat", tmp_path / "emb")
    pairs = build_pairs(emb, tmp_path / "pairs", [(0, 1), (2, 4)])
    ds = SPPSDataset(export(pairs, tmp_path / "spps", combined=True).path)
    assert [ds.target(i) for i in range(len(ds))] == [-1] * 8


def test_map_style_in_a_multiworker_dataloader(exported: tuple[Stores, Path, Path]) -> None:
    _, shards, _ = exported
    loader = torch.utils.data.DataLoader(SPPSDataset(shards, augment()), batch_size=4,
                                         shuffle=True, num_workers=2, drop_last=False)
    seen = 0
    for (v1, v2), target in loader:
        assert v1.shape[1:] == v2.shape[1:] == (3, SIZE, SIZE)
        assert target.dtype == torch.int64
        seen += v1.shape[0]
    assert seen == 27


# ---------------------------------------------------------------------------------------------
# iterable (WebDataset)


def test_webdataset_pipeline_streams_every_sample_once(
        exported: tuple[Stores, Path, Path]) -> None:
    _, shards, _ = exported
    urls = shard_urls(shards)
    assert isinstance(urls, list) and len(urls) == 6
    ds = spps_webdataset(shards, augment(), shuffle=8, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    seen = 0
    for (v1, v2), target in loader:
        assert v1.shape[1:] == v2.shape[1:] == (3, SIZE, SIZE)
        assert ((target >= 0) & (target < 3)).all()
        seen += v1.shape[0]
    assert seen == 27


def test_webdataset_pipeline_matches_the_map_style_dataset(
        exported: tuple[Stores, Path, Path]) -> None:
    _, shards, _ = exported
    ds = SPPSDataset(shards)
    streamed = list(spps_webdataset(shards, T.PILToTensor(), shuffle=0, shardshuffle=0))
    mapped = [(T.PILToTensor()(a), T.PILToTensor()(b), ds.target(i))
              for i, (a, b) in enumerate(ds.images(i) for i in range(len(ds)))]
    assert len(streamed) == len(mapped) == 27
    for (views, target), (a, b, t) in zip(streamed, mapped, strict=True):
        assert torch.equal(views[0], a) and torch.equal(views[1], b) and target == t


def test_resampled_epochs_are_samples_of_the_export(exported: tuple[Stores, Path, Path]) -> None:
    """An epoch of ``epoch_samples`` drawn with replacement: each item is one of the export's
    samples, decoded into the same views and target as the map-style dataset gives."""
    _, shards, _ = exported
    ds = SPPSDataset(shards)
    known = {(T.PILToTensor()(a).numpy().tobytes(), T.PILToTensor()(b).numpy().tobytes(),
              ds.target(i)) for i, (a, b) in enumerate(ds.images(i) for i in range(len(ds)))}
    streamed = list(spps_webdataset(shards, T.PILToTensor(), resampled=True, epoch_samples=40,
                                    shuffle=0))
    assert len(streamed) == 40  # more than the 27 samples: drawn with replacement
    for (first, second), target in streamed:
        assert (first.numpy().tobytes(), second.numpy().tobytes(), target) in known


def test_webdataset_pipeline_splits_by_node(exported: tuple[Stores, Path, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, shards, _ = exported
    monkeypatch.setenv("WORLD_SIZE", "2")
    counts = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        counts.append(sum(1 for _ in spps_webdataset(shards, shuffle=0, shardshuffle=0)))
    assert sum(counts) == 27 and all(c > 0 for c in counts)


def test_to_views_needs_an_image() -> None:
    with pytest.raises(ValueError, match="no anchor or image"):
        ToViews()({"__key__": "x", "json": b"{}"})


def test_parquet_export_has_no_shards_to_stream(exported: tuple[Stores, Path, Path]) -> None:
    _, _, table = exported
    with pytest.raises(StoreError, match="without shards"):
        shard_urls(table)


# ---------------------------------------------------------------------------------------------
# examples


def _load_example(name: str) -> ModuleType:
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # DataLoader workers unpickle its classes by module name
    spec.loader.exec_module(module)
    return module


def test_example_trains_moco_from_shards(exported: tuple[Stores, Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, shards, _ = exported
    train = _load_example("train_moco_from_shards")
    losses = train.main([str(shards), "--steps", "3", "--batch-size", "8", "--queue", "64",
                         "--workers", "2", "--size", "16"])
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)
    assert "samples/s" in capsys.readouterr().out


def test_example_reads_spps_parquet(exported: tuple[Stores, Path, Path]) -> None:
    s, shards, _ = exported
    stats = _load_example("read_spps_parquet").main([str(shards)])
    meta = _meta(s)
    same = sum(meta["label"][a] == meta["label"][b] for a, b in s.pair_list)
    assert stats["pairs"] == 15
    assert stats["pair_accuracy"] == pytest.approx(same / 15)
    assert sum(stats["shards"].values()) == 15


def test_pairmine_data_is_a_deprecated_alias() -> None:
    import importlib

    import pairmine.datasets

    sys.modules.pop("pairmine.data", None)
    with pytest.warns(DeprecationWarning, match="import pairmine.datasets instead"):
        alias = importlib.import_module("pairmine.data")
    for name in pairmine.datasets.__all__:
        assert getattr(alias, name) is getattr(pairmine.datasets, name), name
