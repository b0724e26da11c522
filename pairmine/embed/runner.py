"""The runner of the embed stage: the unit (one shard) encoded and written the same way in this
process and on a Ray worker, and the encoder on its device that does the arithmetic."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pairmine.embed.reader import shard_batches
from pairmine.embed.record import EmbedRecord
from pairmine.embed.writer import write_shard
from pairmine.errors import ConfigError, SourceError
from pairmine.progress import Progress

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import torch

    from pairmine.embed.reader import LoadedBatch
    from pairmine.encoders import Encoder
    from pairmine.runtime import PrecisionChoice
    from pairmine.sources import ImageSource


@dataclass(frozen=True)
class ShardJob:
    """Everything encoding any shard of one run needs, as paths and options (small and
    picklable: a Ray actor gets this and opens the source and the encoder itself)."""

    out: Path
    record: EmbedRecord
    device: str
    n_items: int
    workers: int  # DataLoader decode workers per encoder

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.record.shard_size)


class ShardEncoder:
    """Encodes and writes shards of one run; the source, the encoder and the model on its
    device are opened once. Shards are independent: batches never cross one."""

    def __init__(self, job: ShardJob, src: ImageSource, refs: pa.Table, enc: Encoder) -> None:
        self.job, self.src, self.refs, self.enc = job, src, refs, enc
        r = job.record
        self.encoder = DeviceEncoder(enc, device=job.device, precision=r.precision,
                                     dtype=r.dtype)
        if r.decode == "device":
            from pairmine.embed.decode import DeviceJpegDecoder
            from pairmine.embed.reader import ImageDataset

            self.encoder.decoder = DeviceJpegDecoder(
                enc.preprocess, job.device,
                ImageDataset(src, enc.preprocess, draft=r.draft, max_pixels=r.max_image_pixels))

    @classmethod
    def open(cls, job: ShardJob) -> ShardEncoder:
        """Open the run's source and encoder from its job (on a worker), checking that the
        source lists the same items the driver planned the shards for."""
        from pairmine.encoders import load_encoder
        from pairmine.sources import open_source

        r = job.record
        src = open_source(r.source, labels=r.labels, kind=r.source_kind,
                          max_image_bytes=r.max_image_bytes, root=r.root)
        refs = src.refs_listing()  # on disk for a file list: every actor stays bounded
        if refs.num_rows != job.n_items:
            raise SourceError(f"source {r.source} lists {refs.num_rows} items on this worker, "
                              f"{job.n_items} on the driver",
                              "every node must see the same files (shared storage)")
        enc = load_encoder(r.encoder, arch=r.arch, features=r.features)
        return cls(job, src, refs, enc)

    def run(self, shards: list[int], progress: Progress) -> int:
        """Encode and write ``shards``; returns the number of images encoded. On the CPU the
        model's threads leave the decode workers their CPUs (pairmine.runtime.default_threads)."""
        from pairmine.runtime import cpu_threads, default_threads, device_kind

        if device_kind(self.job.device) != "cpu":
            return self._run(shards, progress)
        with cpu_threads(default_threads(self.job.workers)):
            return self._run(shards, progress)

    def _run(self, shards: list[int], progress: Progress) -> int:
        r = self.job.record
        computed = 0
        for k, batches in shard_batches(self.src, self.enc, shards, r.shard_size,
                                        self.job.n_items, r.batch_size, self.job.workers,
                                        self.job.device, r.draft, r.decode,
                                        r.max_image_pixels):
            vectors, ok_rows, bad_rows = self.encoder.encode_shard(batches, progress)
            write_shard(self.job.out, k, vectors, ok_rows, bad_rows, self.refs, self.src)
            computed += len(ok_rows)
        return computed


class DeviceEncoder:
    """The encoder's model on its device: uint8 pixels → normalise → encode → L2-normalise, in
    the run's precision, stored as the run's dtype. With ``decoder`` set (``--decode device``)
    the batches' JPEGs are decoded on the device first."""

    def __init__(self, enc: Encoder, *, device: str, precision: str, dtype: str) -> None:
        import torch

        self.enc = enc
        self.device = torch.device(device)
        self.dtype = dtype
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.channels_last = self.device.type == "cuda"
        model = enc.model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        p = enc.preprocess
        self.mean = torch.tensor(p.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(p.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.decoder: Callable[[LoadedBatch], LoadedBatch] | None = None

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, h, w) uint8 → (n, dim) float32, L2-normalised in fp32."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = pixels.to(self.device, non_blocking=True).float()
            x = (x - self.mean) / self.std  # same as /255 then (x - mean) / std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    feats = self.model(x)
            else:
                feats = self.model(x)
            feats = feats.float().flatten(1)
            return F.normalize(feats, dim=1)

    def encode_shard(self, batches: Iterator[LoadedBatch],
                     progress: Progress) -> tuple[np.ndarray, list[tuple[int, str]],
                                                  list[tuple[int, str]]]:
        """Encode one shard. Returns vectors (rows in item order), (item, sha256) of the rows,
        and (item, reason) of the items that failed."""
        import numpy as np
        import torch

        chunks: list[np.ndarray] = []
        ok_rows: list[tuple[int, str]] = []
        bad_rows: list[tuple[int, str]] = []
        for batch in batches:
            if self.decoder is not None:
                batch = self.decoder(batch)
            feats = None
            finite = np.zeros(0, dtype=bool)
            feats_np = np.zeros((0, self.enc.dim), dtype=self.dtype)
            if batch.pixels.shape[0]:
                feats = self.encode(batch.pixels)
                if feats.shape[1] != self.enc.dim:
                    raise ConfigError(f"encoder {self.enc.spec} gave {feats.shape[1]}-D features, "
                                      f"declared {self.enc.dim}")
                finite = torch.isfinite(feats).all(dim=1).cpu().numpy()
                feats_np = feats.cpu().numpy().astype(self.dtype)
            j = 0
            keep: list[int] = []
            for i, ok, digest, err in zip(batch.indices, batch.ok, batch.sha256, batch.errors,
                                          strict=True):
                if ok:
                    if finite[j]:
                        keep.append(j)
                        ok_rows.append((i, str(digest)))
                    else:
                        bad_rows.append((i, "encoder gave non-finite features"))
                    j += 1
                else:
                    bad_rows.append((i, str(err)))
            if feats is not None and keep:
                chunks.append(feats_np[keep])
            progress.advance(len(batch.indices), errors=len(bad_rows))
        dim = self.enc.dim
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=self.dtype)
        return vectors, ok_rows, bad_rows


def choose_embed_precision(enc: Encoder, device: str, precision: str,
                           batch_size: int) -> PrecisionChoice:
    """embed's ``--precision``: as :func:`pairmine.runtime.choose_precision`, where ``auto`` on
    a CPU with native bf16 times this encoder's forward pass (inference mode, a fixed random
    batch of up to 64 images at its input size) in fp32 and in bf16 autocast."""
    from pairmine.runtime import choose_precision, needs_trial

    step = _forward_trial(enc, device, batch_size) if needs_trial(precision, device) else None
    return choose_precision(precision, device, step)


def _forward_trial(enc: Encoder, device: str, batch_size: int) -> Callable[[str], None]:
    import torch

    crop = enc.preprocess.crop
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (min(batch_size, 64), 3, crop, crop), generator=gen,
                           dtype=torch.uint8)
    encoders = {name: DeviceEncoder(enc, device=device, precision=name, dtype="float32")
                for name in ("fp32", "bf16")}

    def step(name: str) -> None:
        encoders[name].encode(pixels)

    return step
