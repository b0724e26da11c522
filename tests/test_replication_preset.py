"""The ResNet-20-style trainer backbones and the plan of the CIFAR-10 replication benchmark
(issue 21). Nothing here trains the replication: the plan is checked by its --dry-run, and the
benchmark's smoke path runs only under ``-m slow``."""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from pairmine.encoders.archs import BACKBONES, build_backbone, detect_backbone
from pairmine.train import train
from pairmine.train.moco import MoCo
from pairmine.train.trainer import arch_names

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "sepp_id_cifar10.py"
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sepp_id_cifar10", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sepp_id_cifar10"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("arch", "width", "params"), [("resnet20-cifar", 64, 269_722),
                                                       ("resnet20x2-cifar", 128, 1_073_962)])
def test_resnet20_trunks_are_he_et_al_cifar_resnets(arch: str, width: int, params: int) -> None:
    assert arch in BACKBONES and arch in arch_names()
    net, feat_dim = build_backbone(arch)
    assert feat_dim == width
    # He et al.'s ResNet-20 has 0.27M parameters with its 64->10 classifier (650 of them)
    assert sum(p.numel() for p in net.parameters()) == params - (width * 10 + 10)
    names = {k for k, _ in net.named_parameters()}
    assert {"conv1.weight", "layer1.2.conv2.weight", "layer3.2.bn2.bias"} <= names
    assert not any(k.startswith("layer4.") for k in names)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, width)
    assert detect_backbone(net.state_dict()) == arch  # three stages, width from the stem
    deeper = {**net.state_dict(), "layer2.3.conv1.weight": torch.zeros(1)}
    assert detect_backbone(deeper) is None  # a ResNet-32-like layout is none of BACKBONES


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_resnet20_trains_and_its_checkpoint_loads_as_an_encoder(tmp_path: Path) -> None:
    import pairmine.encoders.pairmine_ckpt  # noqa: F401 - registers pairmine: (idempotent)
    from pairmine.encoders import load_encoder

    rng = np.random.default_rng(3)
    for i in range(16):
        d = tmp_path / "img" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:02d}.png").write_bytes(_png(rng.integers(0, 256, (12, 12, 3), np.uint8)))
    train(tmp_path / "img", tmp_path / "run", arch="resnet20-cifar", image_size=8,
          batch_size=8, moco_k=32, workers=0, precision="fp32", threads=1, epochs=1)
    model = MoCo("resnet20-cifar", dim=128, k=32, m=0.99)
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    x = torch.randn(3, 3, 8, 8)
    head = load_encoder(f"pairmine:{tmp_path / 'run'}")
    backbone = load_encoder(f"pairmine:{tmp_path / 'run'}", features="backbone")
    assert head.arch == "resnet20-cifar" and head.dim == 128 and backbone.dim == 64
    with torch.no_grad():
        assert torch.allclose(head.model(x), model.encoder_q(x), atol=1e-5)
        fc, model.encoder_q.fc = model.encoder_q.fc, torch.nn.Identity()
        assert torch.allclose(backbone.model(x), model.encoder_q(x), atol=1e-5)
        model.encoder_q.fc = fc


def test_cpu_preset_plan_runs_every_run_of_the_protocol(bench: ModuleType,
                                                        tmp_path: Path) -> None:
    s, _ = bench.parse([str(tmp_path / "w"), "--preset", "cpu"])
    steps = bench.plan(s, list(bench.RUNS))
    names = [st["name"] for st in steps]
    for run in ("vanilla", "seppid-ssl", "seppid-supervised", "random-dup", "vanilla-seed1",
                "<better seppid>-seed1"):
        assert run in names and f"eval {run}" in names
    trains = [st["cmd"] for st in steps if st["cmd"] and st["cmd"][0] == "train"]
    assert len(trains) == 6
    for cmd in trains:  # same arch, epochs, batch and settings for every run
        assert cmd[cmd.index("--arch") + 1] == "resnet20-cifar"
        assert cmd[cmd.index("--epochs") + 1] == str(s.p.epochs)
        assert "--resume" in cmd
    assert [c[c.index("--seed") + 1] for c in trains].count("1") == 2
    evals = [st["cmd"] for st in steps if st["cmd"] and st["cmd"][0] == "eval"]
    assert all(c[c.index("--train") + 1].endswith("train-5000.csv") for c in evals)
    supervised = next(st["cmd"] for st in steps if st["name"] == "embed supervised")
    assert supervised[supervised.index("--encoder") + 1].startswith("cifar-resnet:")
    assert s.n_train == 50_000  # all of CIFAR-10's train images
    # vanilla's second seed alone: no second SePP-ID run
    alone = [st["name"] for st in bench.plan(s, ["seppid-ssl", "vanilla-seed"])]
    assert "vanilla-seed1" in alone and "eval vanilla-seed1" in alone
    assert "<better seppid>-seed1" not in alone and "random-dup" not in alone


def test_cpu_preset_fits_its_budget_at_the_measured_speed(bench: ModuleType,
                                                         tmp_path: Path) -> None:
    s, _ = bench.parse([str(tmp_path / "w"), "--preset", "cpu"])
    img_s = bench.estimate_img_s(s, None)
    assert img_s and s.p.budget_min
    longest = max(st.get("train_images", 0) for st in bench.plan(s, list(bench.RUNS)))
    assert longest / img_s <= 60 * s.p.budget_min


def test_dry_run_prints_the_plan_and_runs_nothing(bench: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "w"
    assert bench.main([str(work), "--preset", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not work.exists()
    assert "pairmine train" in out and "pairmine calibrate" in out and "~" in out
    assert "seppid-supervised" in out and "estimated total" in out
    assert bench.main([str(work), "--preset", "cpu", "--dry-run", "--runs", "vanilla",
                       "--img-per-s", "100"]) == 0
    out = capsys.readouterr().out
    assert "seppid" not in out and "100.0 trainer images/s (--img-per-s)" in out


def test_the_table_reports_pairs_speed_and_seed_spread(bench: ModuleType) -> None:
    q = {"band": [0.97, 0.99], "pairs": 10, "same_label": 9, "images": 100,
         "pair_accuracy": 0.9, "anchors": 10, "positives_per_anchor": 2.0}
    run = {"knn_top1": 0.5, "linear_top1": 0.6, "train_items": {"items": 100},
           "img_per_s": 250.0, "train_s": 1800.0}
    report = {"settings": {"label": "reduced", "per_class": 10, "test_per_class": 5,
                           "epochs": 10, "batch_size": 256, "lr": 0.03, "arch": "resnet20-cifar",
                           "precision": "auto", "linear_epochs": 100, "budget_min": 45.0},
              "samplers": {"ssl": {"paper_band": q, "calibrated": None, "trained": q}},
              "runs": {"vanilla": run, "vanilla-seed1": {**run, "linear_top1": 0.58}}}
    table = bench.format_table(report)
    assert "| ssl | paper [0.97, 0.99] | 10 | 10 | 90.0% | 2.00 | yes |" in table
    assert "| vanilla-seed1 | 50.00% | 58.00% | 100 | 250.0 | 30 min | 65.27% | 72.2% |" in table
    assert "vanilla: kNN 0.00, linear 2.00 points" in table


@pytest.mark.slow
def test_smoke_path_of_the_benchmark_runs_and_resumes(tmp_path: Path) -> None:
    """The benchmark's smoke path end to end on 5 images a class (minutes): every step a
    `pairmine` subprocess; a second call skips every finished step."""
    import subprocess

    if not (SHARED / "cifar10-test-jpeg.tar.gz").exists():
        pytest.skip("needs the CIFAR-10 tarballs of ../shared/data")
    cmd = [sys.executable, str(BENCH), str(tmp_path / "w"), "--smoke", "--per-class", "5",
           "--test-per-class", "2", "--epochs", "1", "--batch-size", "16", "--linear-epochs",
           "2", "--no-write",
           "--runs", "vanilla,seppid-supervised,random-dup"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "pairmine train" not in again.stdout
    assert "== vanilla: done" in again.stdout
