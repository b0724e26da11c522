"""The embed stage: an image source through an encoder into a resumable embeddings store.

reader (source) → mapper (decode, resize, crop in DataLoader workers; normalise, encode,
L2-normalise on the device) → writer (one ``emb``/``meta`` shard pair per ``shard_size``
source items; ``manifest.json`` last). Shards cover fixed ranges of source items and batches
never cross a shard, so a resumed run computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine import stores
from pairmine.errors import ConfigError, SourceError
from pairmine.images import DEFAULT_MAX_IMAGE_PIXELS
from pairmine.progress import NullProgress, Progress
from pairmine.runtime import cpu_count, device_name, resolve_device, resolve_precision
from pairmine.sources.base import absolute_spec, check_root
from pairmine.sources.files import DEFAULT_MAX_IMAGE_BYTES, real_root

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import torch

    from pairmine.encoders import Encoder
    from pairmine.loader import LoadedBatch, LoadedItem
    from pairmine.sources import ImageSource

log = logging.getLogger(__name__)

DTYPES = ("float16", "float32")
DECODES = ("cpu", "device")  # where JPEGs are decoded: DataLoader workers, or the device
RUN_LOG = "runs.jsonl"  # one line per invocation (timings); the only file that differs on resume


@dataclass(frozen=True)
class EmbedConfig:
    """Everything that determines the bytes of the store (recorded in the manifest)."""

    source: str
    source_kind: str | None
    labels: bool
    encoder: str
    arch: str | None
    features: str | None
    dtype: str
    shard_size: int
    batch_size: int
    precision: str  # resolved
    draft: bool
    decode: str = "cpu"
    # which images are read at all: over a cap, or outside root, an image is an error entry
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    root: str | None = None  # resolved (symlinks followed)


@dataclass
class EmbedResult:
    path: Path
    images: int
    errors: int
    dim: int
    shards: int
    resumed_shards: int
    seconds: float
    device: str
    precision: str
    encoder: dict[str, Any] = field(default_factory=dict)
    ignored: int = 0  # entries the source considered and did not make images of
    cluster: dict[str, Any] | None = None  # with Ray: units per node, retried units, nodes

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def embed(
    source: str | Path,
    out: str | Path,
    *,
    encoder: str,
    arch: str | None = None,
    features: str | None = None,
    labels: bool = True,
    source_kind: str | None = None,
    batch_size: int = 256,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    dtype: str = "float16",
    shard_size: int = 65536,
    draft: bool = True,
    decode: str = "cpu",
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    root: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    ray: str | None = None,
    ray_workers: int | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    max_retries: int = 3,
) -> EmbedResult:
    """Embed every image of ``source`` with ``encoder`` into the store ``out``.

    Features are L2-normalised in float32 and stored as ``dtype``. Unreadable images are
    skipped and listed in ``errors.parquet``. An incomplete store at ``out`` is resumed; a
    complete one is only replaced with ``overwrite``. ``decode="device"`` decodes JPEGs on the
    compute device (nvJPEG on CUDA) instead of in the DataLoader workers. An image file over
    ``max_image_bytes``, an image declaring over ``max_image_pixels`` pixels, and with
    ``root`` an image file that resolves outside that folder, is an error entry.

    ``ray`` (``"auto"``, ``"local"`` or a cluster address) encodes the shards on Ray actors
    (``ray_workers`` of them, each with ``gpus_per_worker``/``cpus_per_worker``, loading the
    encoder once; a dead one is restarted ``max_retries`` times); the store is byte-identical
    to one written without Ray.
    """
    from pairmine.encoders import load_encoder
    from pairmine.sources import open_source

    progress = progress or NullProgress()
    started = time.perf_counter()
    # validate everything before touching `out`: bad input writes nothing
    if dtype not in DTYPES:
        raise ConfigError(f"unknown --dtype {dtype!r}", "choose float16 or float32")
    if decode not in DECODES:
        raise ConfigError(f"unknown --decode {decode!r}", "choose cpu or device")
    if batch_size < 1 or shard_size < 1:
        raise ConfigError("--batch-size and --shard-size must be at least 1")
    if workers is not None and workers < 0:
        raise ConfigError("--workers must be 0 or more")
    if max_image_bytes < 1 or max_image_pixels < 1:
        raise ConfigError("--max-image-bytes and --max-image-pixels must be at least 1")
    check_root(root)
    out = Path(out)
    scale = None
    if ray is not None:
        from pairmine.scale import RayOptions

        scale = RayOptions(address=ray, workers=ray_workers, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=cpus_per_worker, max_retries=max_retries).checked()
    if scale is not None and scale.gpus_per_worker > 0 and scale.address != "local":
        # the driver may have no GPU (a CPU-only head): "auto" means what a worker has
        from pairmine.scale.cluster import on_a_worker, resolve_embed_device

        device, precision, name = on_a_worker(scale, resolve_embed_device, device, precision)
    else:
        device = resolve_device(device)
        precision = resolve_precision(precision, device)
        name = device_name(device)
    src = open_source(source, labels=labels, kind=source_kind,
                      max_image_bytes=max_image_bytes, root=root)
    ignored = src.ignored()
    if ignored:
        log.info("source %s: %d entries ignored (%s)", source, sum(ignored.values()),
                 ", ".join(f"{n} {reason}" for reason, n in ignored.items()))
    refs = src.refs()
    n_items = refs.num_rows
    if n_items == 0:
        raise SourceError(f"no images found in {source}")
    enc = load_encoder(encoder, arch=arch, features=features)
    config = EmbedConfig(
        source=absolute_spec(str(source)), source_kind=src.kind, labels=labels,
        encoder=encoder, arch=arch, features=enc.features, dtype=dtype, shard_size=shard_size,
        batch_size=batch_size, precision=precision, draft=draft, decode=decode,
        max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels,
        root=None if root is None else real_root(root))

    with stores.begin_run(out, stores.EMBEDDINGS_FORMAT, {"config": asdict(config)},
                          overwrite=overwrite) as run:
        n_shards = -(-n_items // shard_size)
        done = _completed_shards(out, n_shards) if run.resumed else set()
        if done:
            log.info("resuming: %d of %d shards already complete", len(done), n_shards)
        todo = [k for k in range(n_shards) if k not in done]

        workers = _default_workers(device) if workers is None else workers
        job = ShardJob(out=out.absolute(), config=config, device=device, n_items=n_items,
                       workers=workers)
        cluster: dict[str, Any] | None = None
        if scale is None:
            progress.start("embed", total=n_items, unit="images")
            progress.advance(sum(_shard_items(k, shard_size, n_items) for k in done))
            computed = ShardEncoder(job, src, refs, enc).run(todo, progress)
        else:
            from pairmine.scale.embed import embed_on_ray

            computed, cluster = embed_on_ray(job, todo, len(done), scale, progress)
        missing = sorted(set(range(n_shards)) - _completed_shards(out, n_shards))
        if missing:
            raise RuntimeError(f"embed: shards {missing[:5]} of {n_shards} were not written")

        manifest = _assemble_manifest(out, n_shards, config, enc, src, refs)
        elapsed = time.perf_counter() - started
        stores.append_line(out / RUN_LOG, json.dumps(
            {"started_unix": time.time() - elapsed, "seconds": round(elapsed, 3),
             "images_computed": computed, "shards_computed": len(todo),
             "shards_resumed": len(done), "device": name, "workers": workers},
            sort_keys=True))
        run.finish(manifest)
    progress.finish()
    return EmbedResult(path=out, images=int(manifest["count"]), errors=int(manifest["errors"]),
                       dim=enc.dim, shards=n_shards, resumed_shards=len(done), seconds=elapsed,
                       device=name, precision=precision, encoder=enc.describe(),
                       ignored=sum(ignored.values()), cluster=cluster)


# ---------------------------------------------------------------------------------------------
# the unit: one shard, encoded and written the same way here and on a Ray worker


@dataclass(frozen=True)
class ShardJob:
    """Everything encoding any shard of one run needs, as paths and options (small and
    picklable: a Ray actor gets this and opens the source and the encoder itself)."""

    out: Path
    config: EmbedConfig
    device: str
    n_items: int
    workers: int  # DataLoader decode workers per encoder

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.config.shard_size)


class ShardEncoder:
    """Encodes and writes shards of one run; the source, the encoder and the model on its
    device are opened once. Shards are independent: batches never cross one."""

    def __init__(self, job: ShardJob, src: ImageSource, refs: pa.Table, enc: Encoder) -> None:
        self.job, self.src, self.refs, self.enc = job, src, refs, enc
        c = job.config
        self.runner = _Runner(enc, device=job.device, precision=c.precision, dtype=c.dtype)
        if c.decode == "device":
            from pairmine.device_decode import DeviceJpegDecoder
            from pairmine.loader import ImageDataset

            self.runner.decoder = DeviceJpegDecoder(
                enc.preprocess, job.device,
                ImageDataset(src, enc.preprocess, draft=c.draft, max_pixels=c.max_image_pixels))

    @classmethod
    def open(cls, job: ShardJob) -> ShardEncoder:
        """Open the run's source and encoder from its job (on a worker), checking that the
        source lists the same items the driver planned the shards for."""
        from pairmine.encoders import load_encoder
        from pairmine.sources import open_source

        c = job.config
        src = open_source(c.source, labels=c.labels, kind=c.source_kind,
                          max_image_bytes=c.max_image_bytes, root=c.root)
        refs = src.refs()
        if refs.num_rows != job.n_items:
            raise SourceError(f"source {c.source} lists {refs.num_rows} items on this worker, "
                              f"{job.n_items} on the driver",
                              "every node must see the same files (shared storage)")
        enc = load_encoder(c.encoder, arch=c.arch, features=c.features)
        return cls(job, src, refs, enc)

    def run(self, shards: list[int], progress: Progress) -> int:
        """Encode and write ``shards``; returns the number of images encoded."""
        c = self.job.config
        computed = 0
        for k, batches in _shard_batches(self.src, self.enc, shards, c.shard_size,
                                         self.job.n_items, c.batch_size, self.job.workers,
                                         self.job.device, c.draft, c.decode,
                                         c.max_image_pixels):
            vectors, ok_rows, bad_rows = self.runner.encode_shard(batches, self.refs, progress)
            _write_shard(self.job.out, k, vectors, ok_rows, bad_rows, self.refs)
            computed += len(ok_rows)
        return computed


# ---------------------------------------------------------------------------------------------
# reader: batches that never cross a shard boundary


def _shard_items(k: int, shard_size: int, n_items: int) -> int:
    return min(shard_size, n_items - k * shard_size)


def _shard_batches(src: ImageSource, enc: Encoder, todo: list[int], shard_size: int,
                   n_items: int, batch_size: int, workers: int, device: str,
                   draft: bool, decode: str,
                   max_pixels: int) -> Iterator[tuple[int, Iterator[LoadedBatch]]]:
    """For each shard to do: (shard index, its batches). One DataLoader serves all shards so
    decode workers stay busy across shard boundaries."""
    from torch.utils.data import DataLoader

    from pairmine.loader import ImageDataset, collate

    batches: list[list[int]] = []
    per_shard: list[tuple[int, int]] = []  # (shard, number of batches)
    for k in todo:
        lo, hi = k * shard_size, min((k + 1) * shard_size, n_items)
        shard_batches = [list(range(s, min(s + batch_size, hi))) for s in range(lo, hi, batch_size)]
        batches.extend(shard_batches)
        per_shard.append((k, len(shard_batches)))
    if not batches:
        return
    dataset = ImageDataset(src, enc.preprocess, draft=draft, decode=decode,
                           max_pixels=max_pixels)
    loader: DataLoader[LoadedItem] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.startswith("cuda"),
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    stream = iter(loader)
    for k, count in per_shard:
        yield k, (next(stream) for _ in range(count))


# ---------------------------------------------------------------------------------------------
# mapper: normalise, encode, L2-normalise on the device


class _Runner:
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

    def encode_shard(self, batches: Iterator[LoadedBatch], refs: pa.Table,
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


# ---------------------------------------------------------------------------------------------
# writer: emb shard, errors part, meta shard last (its presence marks the shard complete)


def _write_shard(out: Path, k: int, vectors: np.ndarray, ok_rows: list[tuple[int, str]],
                 bad_rows: list[tuple[int, str]], refs: pa.Table) -> None:
    import pyarrow as pa

    emb_path, meta_path = _shard_paths(out, k)
    stores.save_npy_atomic(emb_path, vectors)
    errors = refs.take(pa.array([i for i, _ in bad_rows], type=pa.int64()))
    errors_table = pa.table({
        "key": errors.column("key"), "source": errors.column("source"),
        "member": errors.column("member"),
        "error": pa.array([reason for _, reason in bad_rows], type=pa.string()),
    }, schema=stores.ERRORS_SCHEMA())
    stores.write_parquet_atomic(_errors_part(out, k), errors_table)
    rows = refs.take(pa.array([i for i, _ in ok_rows], type=pa.int64()))
    meta = pa.table({
        # ids are filled in when the manifest is assembled (they depend on earlier shards);
        # until then the shard holds its local row numbers
        "id": pa.array(range(len(ok_rows)), type=pa.int64()),
        "key": rows.column("key"), "source": rows.column("source"),
        "member": rows.column("member"), "label": rows.column("label"),
        "sha256": pa.array([d for _, d in ok_rows], type=pa.string()),
    }, schema=stores.META_SCHEMA())
    stores.write_parquet_atomic(meta_path, meta)


def _shard_paths(out: Path, k: int) -> tuple[Path, Path]:
    return (out / stores.EMB_DIR / stores.shard_name("emb", k, ".npy"),
            out / stores.META_DIR / stores.shard_name("meta", k, ".parquet"))


def _errors_part(out: Path, k: int) -> Path:
    return out / stores.PARTIAL_DIR / stores.shard_name("errors", k, ".parquet")


def _completed_shards(out: Path, n_shards: int) -> set[int]:
    done = set()
    for k in range(n_shards):
        emb_path, meta_path = _shard_paths(out, k)
        if meta_path.exists() and emb_path.exists() and _errors_part(out, k).exists():
            done.add(k)
    return done


def _assemble_manifest(out: Path, n_shards: int, config: EmbedConfig, enc: Encoder,
                       src: ImageSource, refs: pa.Table) -> dict[str, Any]:
    """Give every row its global id, merge the errors, and describe the store."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shards = []
    id_start = 0
    errors = []
    for k in range(n_shards):
        emb_path, meta_path = _shard_paths(out, k)
        meta = pq.read_table(meta_path)
        rows = meta.num_rows
        ids = pa.array(range(id_start, id_start + rows), type=pa.int64())
        if meta.column("id").to_pylist()[:1] != ids.to_pylist()[:1]:
            stores.write_parquet_atomic(meta_path, meta.set_column(0, "id", ids))
        shards.append({"emb": f"{stores.EMB_DIR}/{emb_path.name}",
                       "meta": f"{stores.META_DIR}/{meta_path.name}",
                       "rows": rows, "id_start": id_start})
        id_start += rows
        errors.append(pq.read_table(_errors_part(out, k)))
    error_table = pa.concat_tables(errors) if errors else stores.ERRORS_SCHEMA().empty_table()
    stores.write_parquet_atomic(out / stores.ERRORS_FILE, error_table)
    if id_start == 0:
        raise SourceError(f"none of the {refs.num_rows} images of {config.source} could be read",
                          f"see {out / stores.ERRORS_FILE} for the reasons")
    labelled = pc.sum(pc.is_valid(refs.column("label"))).as_py() or 0
    return {
        "format": stores.EMBEDDINGS_FORMAT,
        "count": id_start,
        "dim": enc.dim,
        "dtype": config.dtype,
        "normalized": True,
        "errors": error_table.num_rows,
        "items": refs.num_rows,
        "shards": shards,
        "source": {"kind": config.source_kind, "spec": config.source, **src.describe(),
                   "labelled_items": labelled, "class_names": src.class_names()},
        "encoder": enc.describe(),
        "config": asdict(config),
    }


# ---------------------------------------------------------------------------------------------
# run bookkeeping


def _default_workers(device: str) -> int:
    cores = cpu_count()
    # on CUDA the model runs on the GPU, so decoding may take every core; on the CPU the
    # model needs the cores too, so decode with fewer
    return min(16, cores) if device.startswith("cuda") else min(4, max(1, cores // 2))


