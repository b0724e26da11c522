"""Embed throughput: decode-only, model-only and end-to-end `embed`, on the same images, one run.

Target: end-to-end >= 90% of the hardware limit. On CUDA decode (CPU) and model (GPU) overlap,
so the limit is min(decode-only, model-only). On the CPU both compete for the same cores, so the
limit is the serial sum 1 / (1/decode_all_cores + 1/model): decode-only is then measured with one
worker per core. Workloads:
  cifar   CIFAR-10 test JPEGs (../shared/data) with the CIFAR ResNet-20 checkpoint, 32 px
  r50     generated 500x375 JPEGs with a torchvision ResNet-50 (random weights saved to a
          local file: throughput does not depend on the weight values), 224 px
  vit     the same JPEGs with a ViT-S/16 and a ViT-B/16 (pairmine's ViT, random weights saved
          in DINO's released-backbone layout, loaded as dino:PATH), 224 px, bicubic resize
Writes its tables between markers in docs/benchmarks.md (the ViT rows in their own section).

    python benchmarks/embed.py --workload cifar --workload r50 [--device cuda] [--n 2000]
        [--decode cpu --decode device]   (one row per decode mode; device = nvJPEG on CUDA)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine, update_section  # noqa: E402


def make_jpegs(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, size=(375 // 5, 500 // 5, 3), dtype=np.uint8)
    for i in range(n):
        # smooth, photo-like content (an upscaled random field) so JPEG sizes are realistic
        img = Image.fromarray(np.roll(base, i, axis=1)).resize((500, 375), Image.BICUBIC)
        img.save(root / f"{i:06d}.jpg", quality=90)


def cifar_images(tmp: Path, n: int) -> Path:
    with tarfile.open(SHARED / "cifar10-test-jpeg.tar.gz") as tar:
        tar.extractall(tmp, filter="data")
    root = tmp / "cifar10" / "test"
    files = sorted(root.rglob("*.jpg"))
    for f in files[n:]:
        f.unlink()
    return root


def decode_only(source: Path, preprocess: object, workers: int, batch: int) -> float:
    from torch.utils.data import DataLoader

    from pairmine.embed.reader import ImageDataset, collate
    from pairmine.sources import open_source

    ds = ImageDataset(open_source(source), preprocess)  # type: ignore[arg-type]
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate,  # type: ignore[arg-type]
                        prefetch_factor=4 if workers else None)
    t = time.perf_counter()
    n = sum(len(b.indices) for b in loader)
    return n / (time.perf_counter() - t)


def model_only(encoder: object, device: str, precision: str, batch: int, n: int) -> float:
    import torch

    from pairmine.embed.runner import DeviceEncoder

    runner = DeviceEncoder(encoder, device=device, precision=precision, dtype="float16")  # type: ignore[arg-type]
    crop = encoder.preprocess.crop  # type: ignore[attr-defined]
    x = torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8)
    if device == "cuda":
        x = x.pin_memory()
    for _ in range(3):
        runner.encode(x)
    if device == "cuda":
        torch.cuda.synchronize()
    reps = max(1, n // batch)
    t = time.perf_counter()
    for _ in range(reps):
        runner.encode(x).cpu()
    return reps * batch / (time.perf_counter() - t)


VITS = {"vit-s16": (384, 6), "vit-b16": (768, 12)}  # width, heads (DINO's ViT-S/16, ViT-B/16)


def run(workload: str, n: int, device: str, workers: int | None, batch: int,
        decode: str = "cpu") -> dict[str, object]:
    import torch

    import pairmine
    from pairmine.encoders import load_encoder
    from pairmine.runtime import cpu_count, resolve_device

    device = resolve_device(device)
    cores = cpu_count()
    workers = workers if workers is not None else (min(16, cores) if device == "cuda"
                                                   else max(1, cores // 2))
    tmp = Path(tempfile.mkdtemp(prefix="pm-bench-embed-"))
    try:
        if workload == "cifar":
            source = cifar_images(tmp, n)
            spec = f"cifar-resnet:{SHARED / 'resnet20-cifar10.th'}"
        elif workload in VITS:
            source = tmp / "jpegs"
            make_jpegs(source, n)
            from pairmine.encoders.vit import PosInterpolation, VisionTransformer, ViTConfig

            width, heads = VITS[workload]
            vit = VisionTransformer(ViTConfig(width=width, depth=12, heads=heads, patch=16,
                                              grid=14, mlp_hidden=4 * width,
                                              pos=PosInterpolation(offset=0.1)))
            weights = tmp / f"dino_{workload}_pretrain.pth"
            torch.save(vit.state_dict(), weights)
            spec = f"dino:{weights}"
        else:
            source = tmp / "jpegs"
            make_jpegs(source, n)
            import torchvision

            weights = tmp / "resnet50.pth"
            torch.save(torchvision.models.resnet50().state_dict(), weights)
            spec = f"torchvision:resnet50:{weights}"
        enc = load_encoder(spec)
        dec = decode_only(source, enc.preprocess, workers if device == "cuda" else cores, batch)
        t = time.perf_counter()
        res = pairmine.embed(source, tmp / "store", encoder=spec, batch_size=batch,
                             workers=workers, device=device, decode=decode)
        e2e = res.images / (time.perf_counter() - t)
        # the model alone in the precision embed chose (on a CPU with bf16 units, by a timed
        # trial): the limit must describe the same arithmetic as the end-to-end run
        precision = res.precision
        mod = model_only(enc, device, precision, batch, max(n, 4 * batch))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    limit = min(dec, mod) if device == "cuda" else 1.0 / (1.0 / dec + 1.0 / mod)
    return {"workload": workload, "n": n, "device": device, "precision": precision,
            "decode_in": decode,
            "workers": workers, "batch": batch, "decode": dec, "model": mod, "e2e": e2e,
            "limit": limit, "ratio": e2e / limit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", action="append", choices=["cifar", "r50", "vit"])
    ap.add_argument("--n", type=int, default=None,
                    help="images (default 10000 cifar, 1000 r50, 300 vit)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--decode", action="append", choices=["cpu", "device"],
                    help="where embed decodes JPEGs (repeatable; default cpu); decode-only is "
                         "always the CPU path")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure: say so
    rows = []
    workloads = [x for w in args.workload or ["cifar", "r50"]
                 for x in (list(VITS) if w == "vit" else [w])]
    for w in workloads:
        n = args.n or {"cifar": 10_000, "r50": 1000}.get(w, 300)
        batch = args.batch or (500 if w == "cifar" else 64)
        for decode in args.decode or ["cpu"]:
            r = run(w, n, args.device, args.workers, batch, decode)
            print(r, flush=True)
            rows.append(r)
    dev = rows[0]["device"] if rows else "cpu"
    vit_rows = [r for r in rows if r["workload"] in VITS]
    for name, title, part in ((f"embed-{dev}", f"embed ({dev})",
                               [r for r in rows if r not in vit_rows]),
                              (f"embed-vit-{dev}", f"embed, ViT encoders ({dev})", vit_rows)):
        if part:
            write_table(part, str(dev), name, title, write=not args.no_write,
                        load=(load_before, os.getloadavg()[0]))


def _rate(x: object) -> str:
    v = float(x)  # type: ignore[arg-type]
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def write_table(rows: list[dict[str, object]], dev: str, name: str, title: str,
                write: bool, load: tuple[float, float]) -> None:
    from pairmine.runtime import device_name

    gpu = f"{device_name(str(dev))} GPU, " if str(dev).startswith("cuda") else ""
    lines = [f"Machine: {gpu}{machine()}; "
             f"date {time.strftime('%Y-%m-%d')}; 1-min load average {load[0]:.1f} at the "
             f"start, {load[1]:.1f} at the end; command: `python benchmarks/embed.py "
             f"{' '.join(sys.argv[1:])}`", "",
             "| workload | images | device, precision | decode in | workers | batch "
             "| decode-only img/s | model-only img/s | limit img/s | end-to-end img/s "
             "| e2e / limit |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['n']:,} | {r['device']}, {r['precision']} | "
                     f"{r['decode_in']} | "
                     f"{r['workers']} | {r['batch']} | {_rate(r['decode'])} | "
                     f"{_rate(r['model'])} | {_rate(r['limit'])} | {_rate(r['e2e'])} | "
                     f"{r['ratio']:.0%} |")
    lines += ["", "limit: min(decode, model) on CUDA, where the two overlap; on the CPU, where "
              "they share the cores, 1 / (1/decode + 1/model) with decode-only on every core."]
    text = "\n".join(lines)
    print(text)
    if write:
        update_section(ROOT / "docs" / "benchmarks.md", name, f"## {title}\n\n{text}")


if __name__ == "__main__":
    main()
