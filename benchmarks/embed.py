"""Embed throughput: decode-only, model-only and end-to-end `embed`, on the same images, one run.

Target: end-to-end >= 90% of the hardware limit. On CUDA decode (CPU) and model (GPU) overlap,
so the limit is min(decode-only, model-only). On the CPU both compete for the same cores, so the
limit is the serial sum 1 / (1/decode_all_cores + 1/model): decode-only is then measured with one
worker per core. Two workloads:
  cifar   CIFAR-10 test JPEGs (../shared/data) with the CIFAR ResNet-20 checkpoint, 32 px
  r50     generated 500x375 JPEGs with a torchvision ResNet-50 (random weights saved to a
          local file: throughput does not depend on the weight values), 224 px
Writes its table between markers in docs/benchmarks.md.

    python benchmarks/embed.py --workload cifar --workload r50 [--device cuda] [--n 2000]
        [--decode cpu --decode device]   (one row per decode mode; device = nvJPEG on CUDA)
"""

from __future__ import annotations

import argparse
import platform
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

from _report import update_section  # noqa: E402


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

    from pairmine.loader import ImageDataset, collate
    from pairmine.sources import open_source

    ds = ImageDataset(open_source(source), preprocess)  # type: ignore[arg-type]
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate,  # type: ignore[arg-type]
                        prefetch_factor=4 if workers else None)
    t = time.perf_counter()
    n = sum(len(b.indices) for b in loader)
    return n / (time.perf_counter() - t)


def model_only(encoder: object, device: str, precision: str, batch: int, n: int) -> float:
    import torch

    from pairmine.embed import _Runner

    runner = _Runner(encoder, device=device, precision=precision, dtype="float16")  # type: ignore[arg-type]
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


def run(workload: str, n: int, device: str, workers: int | None, batch: int,
        decode: str = "cpu") -> dict[str, object]:
    import torch

    import pairmine
    from pairmine.encoders import load_encoder
    from pairmine.runtime import cpu_count, resolve_device, resolve_precision

    device = resolve_device(device)
    precision = resolve_precision("auto", device)
    cores = cpu_count()
    workers = workers if workers is not None else (min(16, cores) if device == "cuda"
                                                   else max(1, cores // 2))
    tmp = Path(tempfile.mkdtemp(prefix="pm-bench-embed-"))
    try:
        if workload == "cifar":
            source = cifar_images(tmp, n)
            spec = f"cifar-resnet:{SHARED / 'resnet20-cifar10.th'}"
        else:
            source = tmp / "jpegs"
            make_jpegs(source, n)
            import torchvision

            weights = tmp / "resnet50.pth"
            torch.save(torchvision.models.resnet50().state_dict(), weights)
            spec = f"torchvision:resnet50:{weights}"
        enc = load_encoder(spec)
        dec = decode_only(source, enc.preprocess, workers if device == "cuda" else cores, batch)
        mod = model_only(enc, device, precision, batch, max(n, 4 * batch))
        t = time.perf_counter()
        res = pairmine.embed(source, tmp / "store", encoder=spec, batch_size=batch,
                             workers=workers, device=device, decode=decode)
        e2e = res.images / (time.perf_counter() - t)
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
    ap.add_argument("--workload", action="append", choices=["cifar", "r50"])
    ap.add_argument("--n", type=int, default=None, help="images (default 10000 cifar, 1000 r50)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--decode", action="append", choices=["cpu", "device"],
                    help="where embed decodes JPEGs (repeatable; default cpu); decode-only is "
                         "always the CPU path")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    rows = []
    for w in args.workload or ["cifar", "r50"]:
        n = args.n or (10_000 if w == "cifar" else 1000)
        batch = args.batch or (500 if w == "cifar" else 64)
        for decode in args.decode or ["cpu"]:
            r = run(w, n, args.device, args.workers, batch, decode)
            print(r, flush=True)
            rows.append(r)
    from pairmine.runtime import device_name

    dev = rows[0]["device"] if rows else "cpu"
    lines = [f"Machine: {device_name(str(dev))}, {platform.platform()}; "
             f"date {time.strftime('%Y-%m-%d')}; command: `python benchmarks/embed.py "
             f"{' '.join(sys.argv[1:])}`", "",
             "| workload | images | device, precision | decode in | workers | batch "
             "| decode-only img/s | model-only img/s | limit img/s | end-to-end img/s "
             "| e2e / limit |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['n']:,} | {r['device']}, {r['precision']} | "
                     f"{r['decode_in']} | "
                     f"{r['workers']} | {r['batch']} | {r['decode']:,.0f} | {r['model']:,.0f} | "
                     f"{r['limit']:,.0f} | {r['e2e']:,.0f} | {r['ratio']:.0%} |")
    lines += ["", "limit: min(decode, model) on CUDA, where the two overlap; on the CPU, where "
              "they share the cores, 1 / (1/decode + 1/model) with decode-only on every core."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        update_section(ROOT / "docs" / "benchmarks.md", f"embed-{dev}", "## embed (" + str(dev)
                       + ")\n\n" + text)


if __name__ == "__main__":
    main()
