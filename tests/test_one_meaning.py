"""One meaning in one place: every stage that draws a subset, codes content hashes, crops an
image, lists image extensions, reads a checkpoint or resolves a device uses the one definition.

Each test here failed while two stages kept their own copies (they had drifted)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pairmine import stores
from pairmine.quality import bands as bd


def write_embeddings(root: Path, vectors: np.ndarray,
                     hashes: list[str | None] | None = None) -> Path:
    """An embeddings store in the layout embed writes (one shard)."""
    n, d = vectors.shape
    keys = [f"c0/{i:04d}.png" for i in range(n)]
    stores.save_npy_atomic(root / stores.EMB_DIR / "emb-00000.npy", vectors)
    if hashes is None:
        hashes = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    meta = pa.table({
        "id": pa.array(np.arange(n), pa.int64()),
        "key": pa.array(keys, pa.string()),
        "source": pa.array([f"/nowhere/{k}" for k in keys], pa.string()),
        "member": pa.array([None] * n, pa.string()),
        "label": pa.array([0] * n, pa.int64()),
        "sha256": pa.array(hashes, pa.string()),
    }, schema=stores.META_SCHEMA())
    stores.write_parquet_atomic(root / stores.META_DIR / "meta-00000.parquet", meta)
    stores.finish_store(root, {
        "format": stores.EMBEDDINGS_FORMAT, "count": n, "dim": d, "dtype": str(vectors.dtype),
        "shards": [{"emb": f"{stores.EMB_DIR}/emb-00000.npy",
                    "meta": f"{stores.META_DIR}/meta-00000.parquet", "rows": n,
                    "id_start": 0}],
        "source": {"kind": "folder", "spec": str(root), "class_names": None}})
    return root


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 8))
    unit: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return unit


def calibrate_anchors(emb: Path, subset: str, seed: int,
                      monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """The anchors calibrate searched (its scope, as it handed it to the band search)."""
    from pairmine.quality.calibrate import calibrate

    seen: list[np.ndarray] = []
    real = bd.scan_scores

    def recording(vectors: np.ndarray, floor: float, scope: Any, **kw: Any) -> bd.Scored:
        seen.append(np.asarray(scope.anchors))
        return real(vectors, floor, scope, **kw)

    monkeypatch.setattr(bd, "scan_scores", recording)
    calibrate(emb, floor=0.5, subset=subset, seed=seed, engine="torch", device="cpu",
              use_labels=False)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize(("n", "subset", "seed", "count"),
                         [(5, "0.5", 0, 3), (1, "0.1", 0, 1), (9, "0.5", 3, 5),
                          (9, "4", 1, 4)])
def test_match_and_calibrate_draw_the_same_anchors(tmp_path: Path, n: int, subset: str,
                                                   seed: int, count: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pairmine

    emb = write_embeddings(tmp_path / "emb", unit_vectors(n))
    matched = pairmine.match(emb, tmp_path / "pairs", min_score=0.5, max_score=0.99,
                             subset=subset, seed=seed, engine="torch", device="cpu")
    drawn = stores.open_pairs(matched.path).subset_ids()
    assert drawn.size == count  # half up, at least one anchor
    calibrated = calibrate_anchors(emb, subset, seed, monkeypatch)
    np.testing.assert_array_equal(calibrated, drawn)


def test_calibrate_rejects_what_match_rejects(tmp_path: Path) -> None:
    from pairmine.errors import ConfigError
    from pairmine.quality.calibrate import calibrate

    emb = write_embeddings(tmp_path / "emb", unit_vectors(4))
    for bad in ("1e3", "0", "1.5", "many"):
        with pytest.raises(ConfigError, match="--subset"):
            calibrate(emb, floor=0.5, subset=bad, use_labels=False)
        with pytest.raises(ConfigError, match="--subset"):
            stores.parse_subset(bad)


def test_eval_pairs_scope_is_the_subset_match_drew(tmp_path: Path) -> None:
    import pairmine
    from pairmine.quality.labels import pairs_scope

    emb = write_embeddings(tmp_path / "emb", unit_vectors(9))
    matched = pairmine.match(emb, tmp_path / "pairs", min_score=0.5, max_score=0.99,
                             subset=0.5, seed=3, against="all", engine="torch", device="cpu")
    pairs = stores.open_pairs(matched.path)
    scope = pairs_scope(pairs, 9)
    np.testing.assert_array_equal(scope.anchors, pairs.subset_ids())
    assert scope.against == "all"


def test_quality_drops_the_duplicates_match_drops(tmp_path: Path) -> None:
    """Rows 0 and 1 have the same bytes; row 2 has no recorded hash: only 0-1 is dropped."""
    v = unit_vectors(1)
    vectors = np.repeat(v, 3, axis=0)
    emb = write_embeddings(tmp_path / "emb", vectors, hashes=["h", "h", None])
    store = stores.open_embeddings(emb)
    codes = bd.duplicate_codes(store.meta)
    assert codes is not None
    match_codes, column = stores.content_codes(store.meta)
    np.testing.assert_array_equal(codes, match_codes)
    assert column == "sha256"
    assert codes[0] == codes[1] != codes[2]

    no_hash = write_embeddings(tmp_path / "emb2", vectors, hashes=[None, None, None])
    meta = stores.open_embeddings(no_hash).meta.drop_columns(["sha256"])
    assert bd.duplicate_codes(meta) is None


# ---------------------------------------------------------------------------------------------
# the CLI: one command table, one interrupt rule, one output rule


def test_a_typo_in_the_command_table_is_an_error_not_a_missing_command() -> None:
    from pairmine.cli import COMMANDS, check_commands

    check_commands(COMMANDS)
    with pytest.raises(ImportError, match="eval-pairs -> eval_pair"):
        check_commands({**COMMANDS, "eval-pairs": "eval_pair"})


def test_every_command_of_the_table_loads_under_its_name() -> None:
    import click

    from pairmine.cli import COMMANDS, cli

    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name


@pytest.mark.parametrize(("command", "note"), [
    ("embed", "run the same command again to resume"), ("match", "resume"),
    ("export", "resume"), ("train", "resume"), ("eval", "nothing was written"),
    ("calibrate", "nothing was written"), ("eval-pairs", "nothing was written"),
    ("verify", "nothing was written"), ("show", None), ("demo", None)])
def test_the_interrupt_message_promises_resume_only_where_it_resumes(command: str,
                                                                     note: str | None) -> None:
    from pairmine.commands.common import interrupt_note

    text = interrupt_note(command)
    if note is None:
        assert text == ""
    else:
        assert note in text
    assert ("resume" in text) == (command in ("embed", "match", "export", "train"))


def _interrupt(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


def test_an_interrupted_calibrate_says_nothing_was_written(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from click.testing import CliRunner

    from pairmine import quality
    from pairmine.cli import cli

    emb = write_embeddings(tmp_path / "emb", unit_vectors(4))
    monkeypatch.setattr(quality, "calibrate", _interrupt)
    result = CliRunner().invoke(cli, ["calibrate", str(emb)])
    assert result.exit_code == 130
    assert "nothing was written" in result.stderr and "resume" not in result.stderr


def test_an_interrupted_match_says_it_resumes(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from click.testing import CliRunner

    from pairmine.cli import cli

    stage = importlib.import_module("pairmine.match")  # the module (pairmine.match is the function)
    emb = write_embeddings(tmp_path / "emb", unit_vectors(4))
    monkeypatch.setattr(stage, "match", _interrupt)
    result = CliRunner().invoke(cli, ["match", str(emb), str(tmp_path / "pairs")])
    assert result.exit_code == 130
    assert "run the same command again to resume" in result.stderr


def test_every_command_prints_its_result_on_stdout_and_progress_on_stderr(
        image_folder: Path, tmp_path: Path) -> None:
    """The one output rule: a command's summary (its result) goes to stdout, so it can be
    piped; progress bars and log lines go to stderr."""
    from click.testing import CliRunner

    from pairmine.cli import cli

    emb, pairs, spps = tmp_path / "emb", tmp_path / "pairs", tmp_path / "spps"
    runs = {
        "embed": (["embed", str(image_folder), str(emb), "--encoder", "toy:0",
                   "--workers", "0"], "embeddings →"),
        "match": (["match", str(emb), str(pairs), "--min", "0.5", "--max", "0.9999"],
                  "anchors"),
        "export": (["export", str(pairs), str(spps)], "export →"),
        "verify": (["verify", str(spps)], "verified"),
        "calibrate": (["calibrate", str(emb), "--floor", "0.5"], "bands [lo,"),
        "eval-pairs": (["eval-pairs", str(pairs)], "pair accuracy of"),
        "show": (["show", str(pairs), str(tmp_path / "page")], "report →"),
        "eval": (["eval", "toy:0", "--train", str(image_folder), "--test", str(image_folder),
                  "--no-linear", "--k", "3", "--workers", "0"], "evaluation"),
        "encoders": (["encoders"], "ResNet trunks"),
    }
    runner = CliRunner()
    for name, (args, summary) in runs.items():
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (name, result.output)
        assert summary in result.stdout, (name, result.stdout)
        assert summary not in result.stderr, (name, result.stderr)
    # progress went to stderr (the embed bar), never into the piped result
    embed = runner.invoke(cli, ["embed", str(image_folder), str(tmp_path / "e2"), "--encoder",
                                "toy:0", "--workers", "0"])
    assert "━" not in embed.stdout


# ---------------------------------------------------------------------------------------------
# one resize + centre crop, one extension list, one checkpoint reader, one head, one policy


def _photo(size: tuple[int, int], seed: int = 0) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("size", [(45, 37), (37, 45), (61, 32), (32, 32), (250, 31)])
def test_embed_eval_and_train_crop_the_same_pixels(size: tuple[int, int]) -> None:
    """torchvision's Resize(32) + CenterCrop(32) is the reference; embed's loader, eval's
    dataset and train's fixed-size path all give its bytes (train rounded differently)."""
    import torch
    import torchvision.transforms as T

    from pairmine.embed.reader import ImageDataset
    from pairmine.encoders.base import Preprocess
    from pairmine.train.data import _fixed
    from pairmine.transforms import resize_center_crop

    img = _photo(size)
    reference = T.PILToTensor()(T.CenterCrop(32)(T.Resize(32)(img)))
    assert torch.equal(resize_center_crop(img, 32, 32), reference)
    assert torch.equal(_fixed(img, 32), reference)
    pre = Preprocess(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    dataset = ImageDataset.__new__(ImageDataset)
    dataset.resize, dataset.crop = pre.resize, pre.crop
    dataset.interpolation, dataset.resize_mode = pre.interpolation, pre.resize_mode
    assert torch.equal(dataset._resize_crop(img), reference)


def test_the_batched_device_crop_has_the_cpu_geometry() -> None:
    import torch

    from pairmine.transforms import resize_center_crop, resize_center_crop_batch

    img = _photo((61, 40))
    batch = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None]
    on_device = resize_center_crop_batch(batch, 32, 24)[0]
    on_cpu = resize_center_crop(img, 32, 24)
    assert on_device.shape == on_cpu.shape == (3, 24, 24)
    assert (on_device.int() - on_cpu.int()).abs().max() <= 8  # resampling only, same crop


def test_one_image_extension_list() -> None:
    """The image extensions are listed once (sources/base.py). The trainer reads an export's
    members through the export's own index (``pairmine.stores.open_export``), so it has no
    list of its own to drift; no other module may define one."""
    import ast

    from pairmine.sources import base, wds

    assert wds.IMAGE_EXTS is base.IMAGE_EXTS  # type: ignore[attr-defined]
    defined = []
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "pairmine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                words = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if {"jpg", "png", "webp"} <= words:
                    defined.append(f"{path.relative_to(root)}:{node.lineno}")
    assert defined == [next(d for d in defined if d.startswith("pairmine/sources/base.py"))]


def _training_checkpoint(path: Path, **drop: bool) -> Path:
    import torch

    from pairmine.stores.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": "resnet18",
             "epoch": 1, "epochs": 1, "config": {"lam": 0.5},
             "preprocess": {"resize": 32, "crop": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
             "state_dict": {"encoder_q.fc.0.weight": torch.zeros(2, 2)}}
    for key in drop:
        del state[key]
    torch.save(state, path)
    return path


@pytest.mark.parametrize("missing", ["preprocess", "state_dict", "arch"])
def test_training_resume_and_the_pairmine_encoder_read_checkpoints_alike(
        tmp_path: Path, missing: str) -> None:
    from pairmine.encoders import load_encoder
    from pairmine.errors import CheckpointError
    from pairmine.train.trainer import load_training_checkpoint

    path = _training_checkpoint(tmp_path / "checkpoint-last.pt", **{missing: True})
    with pytest.raises(CheckpointError, match=f"damaged.*{missing}") as by_trainer:
        load_training_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"damaged.*{missing}") as by_encoder:
        load_encoder(f"pairmine:{tmp_path}")  # the OUT directory: its last checkpoint
    assert by_trainer.value.message == by_encoder.value.message


def test_the_moco_v2_head_is_built_once() -> None:
    from pairmine.encoders.heads import moco_head
    from pairmine.train.moco import mlp_head

    trained = mlp_head(64, 16)
    state = {f"fc.{k}": v for k, v in trained.state_dict().items()}
    rebuilt, dim = moco_head(state, "ckpt")
    assert dim == 16
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in trained.state_dict().items()}
    assert str(rebuilt) == str(trained)


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_embed_and_train_share_one_precision_policy(fast_bf16: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pairmine import runtime
    from pairmine.errors import ConfigError
    from pairmine.train.trainer import _precision

    monkeypatch.delenv("PAIRMINE_PRECISION_TRIAL", raising=False)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast_bf16)
    cpu = torch.device("cpu")
    # without a trial auto is fp32 on every CPU; with native bf16 a timed trial decides
    assert runtime.resolve_precision("auto", "cpu") == _precision("auto", cpu) == "fp32"
    assert runtime.needs_trial("auto", "cpu") == fast_bf16
    monkeypatch.setattr(runtime, "time_precisions",
                        lambda step, names, repeats=3: {"fp32": 2.0, "bf16": 1.0})
    trial = runtime.choose_precision("auto", "cpu", lambda name: None)
    assert trial.precision == ("bf16" if fast_bf16 else "fp32")
    assert (trial.trial is not None) == fast_bf16
    if fast_bf16:
        assert runtime.resolve_precision("bf16", "cpu") == _precision("bf16", cpu) == "bf16"
    else:
        with pytest.raises(ConfigError, match="no native bf16"):
            runtime.resolve_precision("bf16", "cpu")
        with pytest.raises(ConfigError, match="no native bf16"):
            _precision("bf16", cpu)
    assert runtime.resolve_precision("auto", "cuda:1") == _precision("auto",
                                                                     torch.device("cuda:1"))


def test_cuda_n_is_a_device_name_everywhere(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from pairmine import engines, runtime
    from pairmine.cli import cli
    from pairmine.errors import ConfigError

    assert runtime.device_kind("cuda:1") == "cuda"
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        runtime.device_kind("gpu")
    monkeypatch.setattr(engines, "_cuda_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        engines.resolve_engine("torch", "cuda:1")
    monkeypatch.setattr(engines, "_cuda_available", lambda: True)
    assert engines.resolve_engine("auto", "cuda:1") == ("torch", "cuda:1")
    assert engines.resolve_engine("faiss", "cuda:1") == ("faiss", "cpu")  # no GPU kernel
    emb = write_embeddings(tmp_path / "emb", unit_vectors(4))
    for command in (["match", str(emb), str(tmp_path / "p")], ["calibrate", str(emb)]):
        result = CliRunner().invoke(cli, [*command, "--device", "cuda:x"])
        assert result.exit_code == 2 and "unknown device 'cuda:x'" in result.output
        assert "cuda:N" in result.output and len(result.output.strip().splitlines()) == 1


def test_one_architecture_list() -> None:
    import click

    from pairmine.cli import cli
    from pairmine.encoders.archs import BACKBONES
    from pairmine.train.trainer import ARCH_CHOICES

    train = cli.get_command(click.Context(cli), "train")
    assert train is not None
    arch = next(p for p in train.params if p.name == "arch")
    assert isinstance(arch.type, click.Choice)
    assert list(arch.type.choices) == list(ARCH_CHOICES) == BACKBONES


def test_embed_auto_precision_times_the_encoder_on_a_bf16_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """embed's auto on a CPU with native bf16: the encoder's own forward pass, timed in fp32
    and bf16 (timings fixed here), decides; on CUDA and explicit values no trial runs."""
    from pairmine import runtime
    from pairmine.demo import ENCODER
    from pairmine.embed.runner import choose_embed_precision
    from pairmine.encoders import load_encoder

    enc = load_encoder(ENCODER)
    ran: list[str] = []

    def timed(step: Any, names: tuple[str, ...], repeats: int = 3) -> dict[str, float]:
        for name in names:
            step(name)
            ran.append(name)
        return {"fp32": 1.0, "bf16": 0.5}

    monkeypatch.delenv("PAIRMINE_PRECISION_TRIAL", raising=False)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(runtime, "time_precisions", timed)
    choice = choose_embed_precision(enc, "cpu", "auto", batch_size=8)
    assert choice.precision == "bf16" and ran == ["fp32", "bf16"]
    assert choice.describe()["trial_seconds"] == {"fp32": 1.0, "bf16": 0.5}
    assert choose_embed_precision(enc, "cpu", "fp32", batch_size=8).precision == "fp32"
    assert ran == ["fp32", "bf16"]  # an explicit precision runs no trial
