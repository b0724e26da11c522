"""The reference trainer: Eq. 1/Eq. 2, MoCo-v2 mechanics, augmentations, data, resume, CLI."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from pairmine.cli import cli
from pairmine.errors import CheckpointError, ConfigError, StoreError
from pairmine.train import augment as A
from pairmine.train.data import DUPLICATE, INSTANCE, SEMANTIC, TwoViews, open_train_data
from pairmine.train.loss import eq2, info_nce, sepp_id_loss
from pairmine.train.moco import MoCo, SplitBatchNorm2d
from pairmine.train.trainer import LAST, load_training_checkpoint, train, train_step

# a tiny but real setting: resnet18-cifar on 16-px crops, batch 16, a short queue
# fp32 and one thread: no precision trial, the same on every CPU and on a busy machine
TINY = {"arch": "resnet18-cifar", "image_size": 8, "batch_size": 16, "moco_k": 64,
        "workers": 0, "bn_groups": 4, "precision": "fp32", "threads": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These models are tiny: one thread is as fast, and far faster on a busy machine (idle
    OpenMP threads spin while another process holds the core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 random 20x18 images in 2 classes (PNG)."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(7)
    for i in range(32):
        d = root / f"c{i % 2}"
        d.mkdir(exist_ok=True)
        (d / f"{i:03d}.png").write_bytes(_png(rng.integers(0, 256, (18, 20, 3), np.uint8)))
    return root


def _write_export(root: Path, n_images: int = 24, n_pairs: int = 5, combined: bool = True,
                  seed: int = 3) -> Path:
    """A real `pairmine export` (`--combined` by default) in two shards: ``n_images`` random
    PNGs, the pairs (0, 1), (2, 3), ... of an embeddings and a pairs store built by hand."""
    from test_export import build_embeddings, build_pairs

    from pairmine.export import export

    rng = np.random.default_rng(seed)
    for i in range(n_images):
        folder = root / "images" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(_png(rng.integers(0, 256, (18, 18, 3), np.uint8)))
    emb = build_embeddings(root / "images", root / "emb")
    pairs = build_pairs(emb, root / "pairs", [(2 * p, 2 * p + 1) for p in range(n_pairs)])
    samples = n_pairs + (n_images if combined else 0)
    return export(pairs, root / "spps", combined=combined, shuffle=True, seed=seed,
                  shard_size=-(-samples // 2)).path


# ---------------------------------------------------------------------------------------------
# Eq. 1 and Eq. 2


def test_info_nce_is_eq1_against_the_queue() -> None:
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 8, generator=gen), dim=1)
    k = F.normalize(torch.randn(5, 8, generator=gen), dim=1)
    queue = F.normalize(torch.randn(8, 11, generator=gen), dim=0)
    tau = 0.2
    got = info_nce(q, k, queue, tau)
    for i in range(5):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = sum(math.exp(float(q[i] @ queue[:, j]) / tau) for j in range(11))
        assert got[i].item() == pytest.approx(-math.log(pos / (pos + neg)), rel=1e-5)
    # MoCo's own formulation: cross entropy with the positive as class 0
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / tau
    moco = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert sepp_id_loss(q, k, queue, tau, torch.zeros(5, dtype=torch.bool), 1.0).item() == \
        pytest.approx(moco.item(), rel=1e-6)


def test_eq2_on_a_hand_built_batch_equals_a_direct_computation() -> None:
    """Three images: image 0 has two semantic positives, image 1 one, image 2 none."""
    gen = torch.Generator().manual_seed(1)
    d, tau, lam = 6, 0.1, 0.7
    u = F.normalize(torch.randn(3, d, generator=gen), dim=1)  # query views u_i
    v = F.normalize(torch.randn(3, d, generator=gen), dim=1)  # second views v_i
    vm = F.normalize(torch.randn(3, d, generator=gen), dim=1)  # semantic positives v_m
    queue = F.normalize(torch.randn(d, 9, generator=gen), dim=0)
    positives = {0: [0, 1], 1: [2], 2: []}

    def ell(a: torch.Tensor, b: torch.Tensor) -> float:  # Eq. 1, written out
        num = math.exp(float(a @ b) / tau)
        return -math.log(num / (num + sum(math.exp(float(a @ queue[:, j]) / tau)
                                          for j in range(queue.shape[1]))))

    direct = sum(ell(u[i], v[i]) + sum(lam * ell(u[i], vm[m]) for m in positives[i])
                 for i in range(3)) / 3
    # the merged batch: 3 instance rows, then one semantic row per (image, positive)
    rows_q = [u[0], u[1], u[2], u[0], u[0], u[1]]
    rows_k = [v[0], v[1], v[2], vm[0], vm[1], vm[2]]
    semantic = torch.tensor([False, False, False, True, True, True])
    merged = sepp_id_loss(torch.stack(rows_q), torch.stack(rows_k), queue, tau, semantic, lam)
    assert merged.item() == pytest.approx(direct, rel=1e-5)
    # and eq2() (the printed formula with a λ_im matrix) agrees
    inst = info_nce(u, v, queue, tau)
    sem = torch.zeros(3, 2)
    lam_im = torch.zeros(3, 2)
    for i, ms in positives.items():
        for j, m in enumerate(ms):
            sem[i, j] = info_nce(u[i:i + 1], vm[m:m + 1], queue, tau)[0]
            lam_im[i, j] = lam
    assert eq2(inst, sem, lam_im).item() == pytest.approx(direct, rel=1e-5)


def test_lambda_zero_is_vanilla_moco_v2_on_the_same_batch() -> None:
    torch.manual_seed(0)
    model = MoCo("resnet18-cifar", dim=16, k=32, m=0.99, bn_groups=1).train()
    x_q, x_k = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    semantic = torch.tensor([False, True, False, True, False, False])
    gen = torch.Generator().manual_seed(5)
    q, k = model(x_q, x_k, gen)
    queue = model.queue.clone()
    seppid = sepp_id_loss(q, k, queue, 0.1, semantic, 0.0)
    inst = ~semantic
    logits = torch.cat([(q[inst] * k[inst]).sum(1, keepdim=True), q[inst] @ queue], 1) / 0.1
    vanilla = F.cross_entropy(logits, torch.zeros(int(inst.sum()), dtype=torch.long))
    assert seppid.item() == pytest.approx(vanilla.item(), rel=1e-6)
    # the semantic rows get no gradient at λ = 0, and do at λ > 0
    g0 = torch.autograd.grad(seppid, q, retain_graph=True)[0]
    assert torch.all(g0[semantic] == 0) and torch.any(g0[inst] != 0)
    g1 = torch.autograd.grad(sepp_id_loss(q, k, queue, 0.1, semantic, 0.5), q)[0]
    assert torch.all(g1[semantic].abs().sum(1) > 0)


# ---------------------------------------------------------------------------------------------
# MoCo mechanics


def test_shuffle_bn_groups_are_applied_to_queries_and_shuffled_keys() -> None:
    torch.manual_seed(0)
    groups = 4
    model = MoCo("resnet18-cifar", dim=16, k=32, m=0.99, bn_groups=groups).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm2d) and m.groups == groups for m in bns)
    x_q, x_k = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)

    # reference: the same weights with plain BN, run on each group on its own
    import copy

    def plain(enc: torch.nn.Module) -> torch.nn.Module:
        ref = copy.deepcopy(enc)
        for m in ref.modules():
            if isinstance(m, SplitBatchNorm2d):
                m.groups = 1
        return ref

    ref_q = plain(model.encoder_q).train()
    expect_q = torch.empty(8, 16)
    for g in range(groups):
        expect_q[g::groups] = F.normalize(ref_q(x_q[g::groups]), dim=1)
    gen = torch.Generator().manual_seed(11)
    q, k = model(x_q, x_k, gen)
    assert torch.allclose(q, expect_q, atol=1e-5)

    perm = torch.randperm(8, generator=torch.Generator().manual_seed(11))
    ref_k = plain(model.encoder_k).train()  # after the momentum update of this forward
    shuffled = x_k[perm]
    out = torch.empty(8, 16)
    for g in range(groups):
        out[g::groups] = F.normalize(ref_k(shuffled[g::groups]), dim=1)
    expect_k = out[torch.argsort(perm)]  # unshuffle: row i is image i's key again
    assert torch.allclose(k, expect_k, atol=1e-5)
    # full-batch statistics would give other features: the grouping matters
    full = F.normalize(ref_k(x_k), dim=1)
    assert not torch.allclose(k, full, atol=1e-3)


def test_momentum_update_and_queue() -> None:
    torch.manual_seed(0)
    model = MoCo("resnet18-cifar", dim=8, k=10, m=0.9, bn_groups=1)
    p_q = next(model.encoder_q.parameters())
    p_k = next(model.encoder_k.parameters())
    assert torch.equal(p_q, p_k) and not p_k.requires_grad
    with torch.no_grad():
        p_q.add_(1.0)
    before = p_k.clone()
    model.momentum_update()
    assert torch.allclose(p_k, 0.9 * before + 0.1 * p_q)
    keys = F.normalize(torch.randn(4, 8), dim=1)
    for step in range(3):  # 12 keys through a queue of 10: wraps around
        model.enqueue(keys + step)
    assert int(model.queue_ptr) == 2
    assert torch.equal(model.queue[:, 0], (keys[2] + 2))
    assert torch.equal(model.queue[:, 9], (keys[1] + 2))


def test_loss_is_finite_and_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = MoCo("resnet18-cifar", dim=32, k=64, m=0.99, bn_groups=2).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05,
                          momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    aug = A.DeviceAugment(A.moco_v2(8), geometric=True)
    with torch.no_grad():  # negatives like the positives: keys of other images of the kind
        for _ in range(8):
            other = (torch.rand(8, 3, 12, 12, generator=gen) * 255).to(torch.uint8)
            model.enqueue(model.keys(aug(other, gen), gen))
    views = (torch.rand(8, 3, 12, 12, generator=gen) * 255).to(torch.uint8)
    x_q, x_k = aug(views, gen), aug(views, gen)
    semantic = torch.zeros(8, dtype=torch.bool)
    losses = [float(train_step(model, model, opt, x_q, x_k, semantic, lam=1.0, temperature=0.1,
                               shuffle=torch.Generator().manual_seed(s), enqueue=False))
              for s in range(6)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] > 2.0 and losses[-1] < losses[0] - 0.5, losses


# ---------------------------------------------------------------------------------------------
# augmentations


def test_batched_colour_ops_match_torchvision() -> None:
    import torchvision.transforms.functional as TF

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 12, 10, generator=gen)
    f = torch.tensor([0.6, 0.9, 1.0, 1.2, 1.4])
    h = torch.tensor([-0.1, -0.03, 0.0, 0.05, 0.1])
    for i in range(5):
        fi, hi = float(f[i]), float(h[i])
        assert torch.allclose(A.adjust_brightness(x, f)[i], TF.adjust_brightness(x[i], fi),
                              atol=1e-6)
        assert torch.allclose(A.adjust_contrast(x, f)[i], TF.adjust_contrast(x[i], fi),
                              atol=1e-5)
        assert torch.allclose(A.adjust_saturation(x, f)[i], TF.adjust_saturation(x[i], fi),
                              atol=1e-5)
        assert torch.allclose(A.adjust_hue(x, h)[i], TF.adjust_hue(x[i], hi), atol=1e-4)
        assert torch.allclose(A.grayscale(x)[i], TF.rgb_to_grayscale(x[i]), atol=1e-6)
    sigma = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.1])
    cfg = A.moco_v2(224)
    blurred = A.gaussian_blur(x, sigma, cfg)
    size = 2 * math.ceil(3 * cfg.blur_sigma[1]) + 1  # 13 taps cover 3σ of the largest σ
    for i in range(5):
        ref = TF.gaussian_blur(x[i], [size, size], [float(sigma[i])] * 2)
        assert torch.allclose(blurred[i], ref, atol=1e-5)
    flat = torch.full((2, 3, 12, 12), 0.3)  # a blur keeps a constant image constant
    assert torch.allclose(A.gaussian_blur(flat, torch.tensor([0.7, 2.0]), cfg), flat, atol=1e-6)


def test_photometric_pipeline_and_seeding() -> None:
    cfg = A.moco_v2(32)
    assert cfg.blur_p == 0 and A.moco_v2(224).blur_p == 0.5  # no blur at CIFAR scale
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    p = A.sample_photometric(64, cfg, torch.Generator().manual_seed(1))
    y = A.photometric(x, p, cfg)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    untouched = ~p.jitter & ~p.gray
    assert torch.equal(y[untouched], x[untouched])
    gray = p.gray
    assert torch.allclose(y[gray][:, 0], y[gray][:, 1]) and gray.any()
    q = A.sample_photometric(64, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(A.photometric(x, q, cfg), y)  # same seed, same views
    # order: a random permutation of the four jitter ops per sample
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(64, 4))


def test_crop_flip_and_batched_crop() -> None:
    from PIL import Image

    img = Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3) % 251)
    cfg = A.moco_v2(16)
    v1 = A.crop_flip(img, cfg, A.generator(0, "views", 0, 5))
    v2 = A.crop_flip(img, cfg, A.generator(0, "views", 0, 5))
    v3 = A.crop_flip(img, cfg, A.generator(0, "views", 1, 5))
    assert v1.shape == (3, 16, 16) and v1.dtype == torch.uint8
    assert torch.equal(v1, v2) and not torch.equal(v1, v3)
    for seed in range(50):  # boxes stay inside the image and within the scale range
        left, top, w, h = A.crop_box(torch.Generator().manual_seed(seed), 40, 30, (0.2, 1.0),
                                     (3 / 4, 4 / 3))
        assert left >= 0 and left + w <= 40 and top >= 0 and top + h <= 30
    # the batched crop of the whole image without flip is a plain resize
    full = A.AugmentConfig(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(A.batched_crop_flip(x, full, torch.Generator()), x, atol=1e-6)
    flip = A.AugmentConfig(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(A.batched_crop_flip(x, flip, torch.Generator()), x.flip(-1),
                          atol=1e-6)


# ---------------------------------------------------------------------------------------------
# data


def test_combined_export_items(tmp_path: Path) -> None:
    root = _write_export(tmp_path / "spps", n_images=24, n_pairs=5)
    data = open_train_data(root)
    assert data.counts() == {"instance": 24, "semantic": 10, "duplicate": 0}
    once = open_train_data(root, pair_directions=1)
    assert once.counts()["semantic"] == 5
    # a pair item's views are the anchor and the positive: different images
    sem = np.flatnonzero(data.kind == SEMANTIC)
    reads = {(data.reader.read(int(data.a[i])), data.reader.read(int(data.b[i]))) for i in sem}
    assert all(a != b for a, b in reads)
    # both directions of every pair
    pairs = {(int(data.a[i]), int(data.b[i])) for i in sem}
    assert all((b, a) in pairs for a, b in pairs)
    ds = TwoViews(data, A.moco_v2(16), seed=0)
    vq, vk, kind = ds[(0, int(sem[0]))]
    assert vq.shape == vk.shape == (3, 16, 16) and kind == SEMANTIC
    import pickle

    clone = pickle.loads(pickle.dumps(ds))  # travels to DataLoader workers
    assert torch.equal(clone[(0, int(sem[0]))][0], vq)


def test_export_without_images_and_random_duplicates(tmp_path: Path,
                                                      tiny_folder: Path) -> None:
    pairs_only = _write_export(tmp_path / "pairs-only", combined=False)
    with pytest.raises(ConfigError, match="--combined"):
        open_train_data(pairs_only)
    data = open_train_data(tiny_folder, random_duplicates=6, seed=1)
    assert data.counts() == {"instance": 32, "semantic": 0, "duplicate": 6}
    dup = data.kind == DUPLICATE
    assert np.array_equal(data.a[dup], data.b[dup]) and len(set(data.a[dup].tolist())) == 6
    assert np.array_equal(open_train_data(tiny_folder, random_duplicates=6, seed=1).a, data.a)
    with pytest.raises(ConfigError):
        open_train_data(tiny_folder, random_duplicates=33)
    emb = tmp_path / "emb"
    emb.mkdir()
    (emb / "manifest.json").write_text(json.dumps({"format": "pairmine/embeddings"}))
    with pytest.raises(StoreError, match="not an export"):
        open_train_data(emb)


# ---------------------------------------------------------------------------------------------
# the loop: checkpoints, exact resume, encoder round trip


def _state(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_training_checkpoint(path)["state_dict"])


def test_resume_matches_an_uninterrupted_run(tmp_path: Path, tiny_folder: Path) -> None:
    opts = {**TINY, "epochs": 2, "seed": 3}
    full = train(tiny_folder, tmp_path / "full", **opts)
    assert full.complete and full.epochs_done == 2
    part = train(tiny_folder, tmp_path / "part", stop_after=1, **opts)
    assert not part.complete and part.epochs_done == 1
    with pytest.raises(StoreError, match="--resume"):
        train(tiny_folder, tmp_path / "part", **opts)
    with pytest.raises(ConfigError, match="lr"):
        train(tiny_folder, tmp_path / "part", resume=True, **{**opts, "lr": 0.1})
    resumed = train(tiny_folder, tmp_path / "part", resume=True, **opts)
    assert resumed.complete and resumed.epochs_done == 2
    a, b = _state(tmp_path / "full" / LAST), _state(tmp_path / "part" / LAST)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    logs = [[json.loads(ln) for ln in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("full", "part")]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert len(logs[0]) == 2 and all(math.isfinite(r["loss"]) for r in logs[0])
    summary = json.loads((tmp_path / "full" / "train.json").read_text())
    assert summary["complete"] and summary["config"]["moco_m"] == 0.99  # CIFAR defaults
    assert summary["config"]["temperature"] == 0.1 and (tmp_path / "full" /
                                                        "checkpoint-0002.pt").exists()
    # the checkpoint holds plain types and tensors only
    raw = torch.load(tmp_path / "full" / LAST, weights_only=True)
    assert raw["epoch"] == 2 and "queue" in raw["state_dict"] and "rng" in raw
    assert resumed.checkpoint.exists()


def test_checkpoint_loads_as_encoder(tmp_path: Path, tiny_folder: Path) -> None:
    import pairmine.encoders.pairmine_ckpt  # noqa: F401 - registers pairmine: (idempotent)
    from pairmine.encoders import load_encoder

    train(tiny_folder, tmp_path / "run", **{**TINY, "epochs": 1})
    torch.manual_seed(0)
    model = MoCo("resnet18-cifar", dim=128, k=64, m=0.99, bn_groups=4)
    model.load_state_dict(_state(tmp_path / "run" / LAST))
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    head = load_encoder(f"pairmine:{tmp_path / 'run' / LAST}")
    assert head.dim == 128 and head.features == "head" and head.arch == "resnet18-cifar"
    assert head.preprocess.crop == 8 and head.preprocess.resize == 8
    with torch.no_grad():
        assert torch.allclose(head.model(x), model.encoder_q(x), atol=1e-5)
        backbone = load_encoder(f"pairmine:{tmp_path / 'run'}", features="backbone")
        assert backbone.dim == 512
        fc = model.encoder_q.fc
        model.encoder_q.fc = torch.nn.Identity()
        assert torch.allclose(backbone.model(x), model.encoder_q(x), atol=1e-5)
        model.encoder_q.fc = fc
    with pytest.raises(CheckpointError):
        load_encoder(f"pairmine:{tiny_folder / 'c0' / '000.png'}")


def test_sepp_id_training_on_a_combined_export(tmp_path: Path) -> None:
    root = _write_export(tmp_path / "spps", n_images=24, n_pairs=8)
    result = train(root, tmp_path / "run", **{**TINY, "epochs": 1, "lam": 0.5})
    record = result.history[0]
    assert result.data["semantic"] == 16 and record["semantic_items"] > 0
    assert math.isfinite(record["loss"])


def test_on_device_augmentation_path(tmp_path: Path, tiny_folder: Path) -> None:
    result = train(tiny_folder, tmp_path / "run", **{**TINY, "epochs": 1, "augment": "device"})
    assert math.isfinite(result.history[0]["loss"]) and result.history[0]["steps"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["moco", "leoclr"])
def test_two_processes_under_torchrun_on_cpu(tmp_path: Path, tiny_folder: Path,
                                             method: str) -> None:
    """DDP with gloo: keys shuffled across processes, one checkpoint, one log; the precision
    trial's choice is rank 0's on every process."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
           "pairmine", "train", str(tiny_folder), str(tmp_path / "run"), "--arch",
           "resnet18-cifar", "--epochs", "1", "--batch-size", "16", "--image-size", "8",
           "--moco-k", "64", "--workers", "0", "--device", "cpu", "--method", method,
           "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["images"] == 32
    assert load_training_checkpoint(tmp_path / "run" / LAST)["config"]["bn_groups"] == 1


# fp16 on a CPU is refused on every CPU (bf16 on a CPU depends on the CPU: test_one_meaning
# covers both branches of that policy)
@pytest.mark.parametrize("bad", [{"lam": 1.5}, {"precision": "fp16", "device": "cpu"},
                                 {"batch_size": 64}, {"batch_size": 10, "bn_groups": 4},
                                 {"arch": "vgg16"}])
def test_bad_options_are_config_errors(tmp_path: Path, tiny_folder: Path,
                                       bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        train(tiny_folder, tmp_path / "run", **{**TINY, "epochs": 1, **bad})
    assert not (tmp_path / "run" / LAST).exists()


def test_cli_train(tmp_path: Path, tiny_folder: Path) -> None:
    runner = CliRunner()
    args = ["train", str(tiny_folder), str(tmp_path / "run"), "--arch", "resnet18-cifar",
            "--epochs", "1", "--batch-size", "16", "--image-size", "8", "--moco-k", "32",
            "--workers", "0", "--bn-groups", "2", "--lambda", "0.5"]
    ok = runner.invoke(cli, args)
    assert ok.exit_code == 0, ok.output
    assert "1 / 1" in ok.output and (tmp_path / "run" / LAST).exists()
    again = runner.invoke(cli, args)  # an existing run without --resume: one clear line
    assert again.exit_code == 1 and "--resume" in again.output
    assert "Traceback" not in again.output
    bad = runner.invoke(cli, [*args[:3], "--lambda", "2", "--epochs", "1"])
    assert bad.exit_code == 2 and "lambda" in bad.output  # a refused value: usage error
    assert INSTANCE == 0


# ---------------------------------------------------------------------------------------------
# LeOCLR


def test_leoclr_loss_is_algorithm_1_on_fixed_tensors() -> None:
    """Algorithm 1 written out per image: q = f_q(X), k¹ = f_k(X¹), k² = f_k(X²),
    L = ℓ(q, k¹) + ℓ(q, k²), ℓ MoCo-v2's InfoNCE against the queue; the crops never meet."""
    from pairmine.train.leoclr import keys_to_enqueue, leoclr_loss

    gen = torch.Generator().manual_seed(4)
    n, d, size, tau = 4, 6, 7, 0.2
    q = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    k1 = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    k2 = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    queue = F.normalize(torch.randn(d, size, generator=gen), dim=0)

    def ell(a: torch.Tensor, b: torch.Tensor) -> float:
        pos = math.exp(float(a @ b) / tau)
        neg = sum(math.exp(float(a @ queue[:, j]) / tau) for j in range(size))
        return -math.log(pos / (pos + neg))

    direct = sum(ell(q[i], k1[i]) + ell(q[i], k2[i]) for i in range(n)) / n
    none = torch.zeros(n, dtype=torch.bool)
    assert leoclr_loss(q, k1, k2, queue, tau, none, 1.0).item() == pytest.approx(direct,
                                                                                 rel=1e-5)
    # the crops are never attracted to each other: moving k² toward k¹ changes nothing but
    # the ℓ(q, k²) term
    assert leoclr_loss(q, k1, k1, queue, tau, none, 1.0).item() == pytest.approx(
        sum(2 * ell(q[i], k1[i]) for i in range(n)) / n, rel=1e-5)
    # semantic rows weigh λ, divided by the instance rows (SePP-ID's merged Eq. 2)
    semantic = torch.tensor([False, False, True, True])
    lam = 0.5
    weighted = (sum(ell(q[i], k1[i]) + ell(q[i], k2[i]) for i in (0, 1))
                + lam * sum(ell(q[i], k1[i]) + ell(q[i], k2[i]) for i in (2, 3))) / 2
    assert leoclr_loss(q, k1, k2, queue, tau, semantic, lam).item() == pytest.approx(
        weighted, rel=1e-5)
    assert torch.equal(keys_to_enqueue(k1, k2, "k1"), k1)
    assert torch.equal(keys_to_enqueue(k1, k2, "both"), torch.cat([k1, k2]))


def test_leoclr_step_sends_the_original_to_the_query_encoder() -> None:
    """train_step with x_k2: q = f_q(X), k¹ = f_k(X¹), k² = f_k(X²) (each crop with its own
    key shuffle), the loss of Algorithm 1, then k¹ and k² (``both``) or k¹ (``k1``) enqueued."""
    import copy

    from pairmine.train.leoclr import leoclr_loss

    for which, enqueued in (("both", 12), ("k1", 6)):
        torch.manual_seed(0)
        model = MoCo("resnet18-cifar", dim=16, k=32, m=0.99, bn_groups=2).train()
        twin = copy.deepcopy(model)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        gen = torch.Generator().manual_seed(1)
        x, x1, x2 = (torch.randn(6, 3, 8, 8, generator=gen) for _ in range(3))
        queue = model.queue.clone()
        semantic = torch.zeros(6, dtype=torch.bool)
        loss = train_step(model, model, opt, x, x1, semantic, lam=1.0, temperature=0.1,
                          shuffle=torch.Generator().manual_seed(2), x_k2=x2,
                          leoclr_queue=which)
        with torch.no_grad():
            q = F.normalize(twin.encoder_q(x), dim=1)  # the original, through f_q
            twin.momentum_update()
            shuffle = torch.Generator().manual_seed(2)
            k1, k2 = twin.keys(x1, shuffle), twin.keys(x2, shuffle)  # crops through f_k
        assert loss.item() == pytest.approx(
            leoclr_loss(q, k1, k2, queue, 0.1, semantic, 1.0).item(), rel=1e-5)
        assert int(model.queue_ptr) == enqueued
        keys = torch.cat([k1, k2]) if which == "both" else k1
        assert torch.allclose(model.queue[:, :enqueued].T, keys, atol=1e-6)


def test_leoclr_views_original_uncropped_and_crops_of_the_positive(tmp_path: Path) -> None:
    """Instance item: X and the crops come from one image. Semantic item (a, b): X is a's
    whole image (resized, never cropped), the crops are b's."""
    from pairmine.sources import open_source
    from pairmine.train.augment import moco_v2
    from pairmine.train.data import OriginalAndCrops, SourceReader, TrainData

    root = tmp_path / "two"
    root.mkdir()
    (root / "a.png").write_bytes(_png(np.full((16, 16, 3), 10, np.uint8)))
    (root / "b.png").write_bytes(_png(np.full((16, 16, 3), 200, np.uint8)))
    src = open_source(str(root), labels=False)
    data = TrainData(SourceReader(src, str(root)), np.array([INSTANCE, SEMANTIC], np.int8),
                     np.array([0, 0]), np.array([0, 1]))
    views = OriginalAndCrops(data, moco_v2(8), seed=0)
    x, x1, x2, kind = views[(0, 0)]
    assert x.shape == x1.shape == x2.shape == (3, 8, 8) and kind == INSTANCE
    assert int(x.float().mean()) == int(x1.float().mean()) == 10
    x, x1, x2, kind = views[(0, 1)]
    assert kind == SEMANTIC and int(x.float().mean()) == 10
    assert int(x1.float().mean()) == int(x2.float().mean()) == 200
    # never cropped: a left-half-dark image keeps both halves in the original view
    half = np.zeros((16, 16, 3), np.uint8)
    half[:, 8:] = 255
    (root / "a.png").write_bytes(_png(half))
    x, _, _, _ = views[(0, 0)]
    assert float(x.float().mean()) == pytest.approx(127.5, abs=8)


def test_leoclr_trains_resumes_and_records_its_queue(tmp_path: Path, tiny_folder: Path) -> None:
    opts = {**TINY, "epochs": 2, "seed": 3, "method": "leoclr", "leoclr_queue": "k1"}
    full = train(tiny_folder, tmp_path / "full", **opts)
    train(tiny_folder, tmp_path / "part", stop_after=1, **opts)
    with pytest.raises(ConfigError, match="leoclr_queue"):
        train(tiny_folder, tmp_path / "part", resume=True, **{**opts, "leoclr_queue": "both"})
    resumed = train(tiny_folder, tmp_path / "part", resume=True, **opts)
    assert full.complete and resumed.complete
    a, b = _state(tmp_path / "full" / LAST), _state(tmp_path / "part" / LAST)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    summary = json.loads((tmp_path / "full" / "train.json").read_text())
    assert summary["config"]["method"] == "leoclr"
    assert summary["config"]["leoclr_queue"] == "k1"
    assert all(math.isfinite(r["loss"]) for r in full.history)


def test_leoclr_with_spps_on_a_combined_export(tmp_path: Path) -> None:
    root = _write_export(tmp_path / "spps", n_images=24, n_pairs=8)
    result = train(root, tmp_path / "run", **{**TINY, "epochs": 1, "lam": 0.5,
                                              "method": "leoclr"})
    assert result.history[0]["semantic_items"] > 0 and math.isfinite(result.last_loss or 0)


# ---------------------------------------------------------------------------------------------
# --max-steps, precision by trial, threads, a failed run's folder


def test_max_steps_ends_the_run_in_a_partial_epoch(tmp_path: Path, tiny_folder: Path) -> None:
    result = train(tiny_folder, tmp_path / "run", **{**TINY, "epochs": 5, "max_steps": 1})
    assert result.complete and result.steps == 1 and result.epochs_done == 1
    record = result.history[0]
    assert record["steps"] == 1 and record["partial"] and record["images"] == 16
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["stopped_at_max_steps"] and summary["steps"] == 1
    assert (tmp_path / "run" / "checkpoint-0001.pt").exists()
    # 3 steps over 2-step epochs: one whole epoch and one step of the next
    longer = train(tiny_folder, tmp_path / "three", **{**TINY, "epochs": 5, "max_steps": 3})
    assert [r["steps"] for r in longer.history] == [2, 1] and longer.steps == 3


@pytest.mark.parametrize(("seconds", "chosen"), [({"fp32": 1.0, "bf16": 0.5}, "bf16"),
                                                 ({"fp32": 1.0, "bf16": 0.95}, "fp32")])
def test_auto_precision_on_a_bf16_cpu_is_a_timed_trial(
        tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch,
        seconds: dict[str, float], chosen: str) -> None:
    from pairmine import runtime

    calls: list[str] = []
    monkeypatch.delenv("PAIRMINE_PRECISION_TRIAL", raising=False)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)

    def timed(step: object, candidates: tuple[str, ...], repeats: int = 3) -> dict[str, float]:
        assert callable(step)
        for name in candidates:  # the trial step really runs in each precision
            step(name)
            calls.append(name)
        return dict(seconds)

    monkeypatch.setattr(runtime, "time_precisions", timed)
    result = train(tiny_folder, tmp_path / "run", **{**TINY, "precision": "auto",
                                                     "max_steps": 1})
    assert calls == ["fp32", "bf16"] and result.precision == chosen
    assert "timed trial" in result.precision_reason
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["precision"] == chosen
    assert summary["run"]["precision"]["trial_seconds"] == seconds
    assert result.history[0]["precision"] == chosen
    raw = torch.load(tmp_path / "run" / LAST, weights_only=True)
    assert raw["run"]["precision"]["precision"] == chosen


def test_auto_precision_without_native_bf16_is_fp32_without_a_trial(
        tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pairmine import runtime

    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(runtime, "time_precisions", lambda *a, **k: pytest.fail("no trial"))
    result = train(tiny_folder, tmp_path / "run", **{**TINY, "precision": "auto",
                                                     "max_steps": 1})
    assert result.precision == "fp32" and "without native bf16" in result.precision_reason
    with pytest.raises(ConfigError, match="no native bf16"):
        train(tiny_folder, tmp_path / "bf16", **{**TINY, "precision": "bf16"})


def test_threads_default_to_the_usable_cpus_minus_the_workers(
        tmp_path: Path, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pairmine import runtime
    from pairmine.train import trainer

    seen: list[int] = []
    real = trainer._Loop.run_epoch

    def spy(self: object, *args: object, **kwargs: object) -> dict[str, object]:
        seen.append(torch.get_num_threads())
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer._Loop, "run_epoch", spy)
    monkeypatch.setattr(runtime, "cpu_count", lambda: 3)
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # the machine's default, above the 3 usable CPUs
    try:
        train(tiny_folder, tmp_path / "run", **{**TINY, "threads": None, "max_steps": 1})
        torch.set_num_threads(2)  # a limit set before the run (OMP_NUM_THREADS, Ray) holds
        train(tiny_folder, tmp_path / "two", **{**TINY, "threads": None, "max_steps": 1})
        assert torch.get_num_threads() == 2  # restored after the run
    finally:
        torch.set_num_threads(before)
    assert seen == [3, 2]  # workers 0: the 3 usable CPUs; then the caller's 2
    assert runtime.compute_threads(1) == 2 and runtime.compute_threads(5) == 1


def test_a_failed_train_leaves_no_empty_folder(tmp_path: Path, tiny_folder: Path) -> None:
    from pairmine.errors import SourceError

    out = tmp_path / "new" / "run"
    with pytest.raises(SourceError):
        train(tmp_path / "no-such-images", out, **TINY)
    assert not (tmp_path / "new").exists()
    # a failure after the folder was made (too few items for a batch) removes it too
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train(tiny_folder, out, **{**TINY, "batch_size": 64, "bn_groups": 4})
    assert not (tmp_path / "new").exists()
    # a folder that existed, or that holds anything, stays
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(SourceError):
        train(tmp_path / "no-such-images", mine / "run", **TINY)
    assert (mine / "notes.txt").read_text() == "keep" and not (mine / "run").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError):
        train(tmp_path / "no-such-images", empty, **TINY)
    assert empty.is_dir()  # the user's folder, not the run's to remove


def test_a_crash_mid_training_keeps_the_last_checkpoint(tmp_path: Path, tiny_folder: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pairmine.train import trainer

    real = trainer._Loop.run_epoch

    def crash_in_epoch_2(self: trainer._Loop, epoch: int, *args: object) -> dict[str, object]:
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer._Loop, "run_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_folder, tmp_path / "run", **{**TINY, "epochs": 2})
    assert (tmp_path / "run" / LAST).exists()  # epoch 1's work stays


def test_cgroup_quota_caps_the_usable_cpus(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pairmine import runtime

    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs on the parent
    (v2 / "job" / "step" / "cpu.max").write_text("max 100000\n")
    monkeypatch.setattr(runtime, "_own_cgroups", lambda: [(2, "", "/job/step")])
    assert runtime.cgroup_cpu_quota(v2) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "slurm").mkdir(parents=True)
    (v1 / "cpu" / "slurm" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "slurm" / "cpu.cfs_period_us").write_text("100000\n")
    monkeypatch.setattr(runtime, "_own_cgroups", lambda: [(1, "cpu,cpuacct", "/slurm")])
    assert runtime.cgroup_cpu_quota(v1) == 3.0
    (v1 / "cpu" / "slurm" / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtime.cgroup_cpu_quota(v1) is None
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda root=None: 0.5)
    assert runtime.cpu_count() == 1  # a fraction of a CPU is still one thread


def test_passive_waits_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI asks OpenMP for passive waits before torch loads; a user's setting stays."""
    import os
    import subprocess
    import sys

    code = ("from pairmine.runtime import prefer_passive_waits; prefer_passive_waits(); "
            "import os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["PASSIVE", "False"]
    mine = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True, check=True).stdout.split()
    assert mine == ["ACTIVE", "False"]


def test_cpu_count_is_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from pairmine import runtime

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda root=None: None)
    assert runtime.cpu_count() == 1 and runtime.compute_threads(1) == 1
