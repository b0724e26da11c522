"""The embed stage: an image source through an encoder into a resumable embeddings store.

reader (source → decode, resize, crop in DataLoader workers) → runner (normalise, encode,
L2-normalise on the device) → writer (one ``emb``/``meta`` shard pair per ``shard_size``
source items; ``manifest.json`` last). Shards cover fixed ranges of source items and batches
never cross a shard, so a resumed run computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine import stores
from pairmine.embed.config import EmbedConfig
from pairmine.embed.reader import shard_items
from pairmine.embed.record import EmbedRecord
from pairmine.embed.runner import ShardEncoder, ShardJob, choose_embed_precision
from pairmine.embed.writer import RUN_LOG, assemble_manifest, completed_shards
from pairmine.errors import SourceError, StoreError
from pairmine.progress import NullProgress, Progress
from pairmine.runtime import (
    TRIAL_CANDIDATES,
    cpu_count,
    device_name,
    needs_trial,
    resolve_device,
    resolve_precision,
)
from pairmine.scale.options import RayOptions
from pairmine.sources.base import absolute_spec
from pairmine.sources.files import real_root

if TYPE_CHECKING:
    from pairmine.encoders import Encoder

log = logging.getLogger(__name__)


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


def embed(source: str | Path, out: str | Path, config: EmbedConfig | None = None, *,
          overwrite: bool = False, progress: Progress | None = None,
          **options: Any) -> EmbedResult:
    """Embed every image of ``source`` with the config's ``encoder`` into the store ``out``.

    ``config`` is an :class:`EmbedConfig`, or its fields are given as keyword arguments
    (``embed(src, out, encoder="toy:0")`` is ``embed(src, out, EmbedConfig(encoder="toy:0"))``).
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
    # every value is checked here, before anything touches `out`: bad input writes nothing
    config = EmbedConfig.build(config, options)
    from pairmine.encoders import load_encoder
    from pairmine.sources import open_source

    progress = progress or NullProgress()
    started = time.perf_counter()
    out = Path(out)
    scale = config.ray_options()
    device, precision = config.device, config.precision
    if scale is not None and scale.gpus_per_worker > 0 and scale.address != "local":
        # the driver may have no GPU (a CPU-only head): "auto" means what a worker has
        from pairmine.scale.cluster import on_a_worker, resolve_embed_device

        device, precision, name = on_a_worker(scale, resolve_embed_device, device, precision)
    else:
        device = resolve_device(device)
        precision = resolve_precision(precision, device)
        name = device_name(device)
    src = open_source(source, labels=config.labels, kind=config.source_kind,
                      max_image_bytes=config.max_image_bytes, root=config.root)
    ignored = src.ignored()
    if ignored:
        log.info("source %s: %d entries ignored (%s)", source, sum(ignored.values()),
                 ", ".join(f"{n} {reason}" for reason, n in ignored.items()))
    # the refs as a listing: a file list of millions of entries stays on disk
    refs = src.refs_listing()
    n_items = int(refs.num_rows)
    if n_items == 0:
        raise SourceError(f"no images found in {source}")
    enc = load_encoder(config.encoder, arch=config.arch, features=config.features)
    if scale is None and needs_trial(config.precision, device):
        precision = _auto_precision(out, enc, device, config.batch_size)
    shard_size = config.shard_size
    record = EmbedRecord(
        source=absolute_spec(str(source)), source_kind=src.kind, labels=config.labels,
        encoder=config.encoder, arch=config.arch, features=enc.features, dtype=config.dtype,
        shard_size=shard_size, batch_size=config.batch_size, precision=precision,
        draft=config.draft, decode=config.decode, max_image_bytes=config.max_image_bytes,
        max_image_pixels=config.max_image_pixels,
        root=None if config.root is None else real_root(config.root))

    with stores.begin_run(out, stores.EMBEDDINGS_FORMAT, {"config": asdict(record)},
                          overwrite=overwrite) as run:
        n_shards = -(-n_items // shard_size)
        done = completed_shards(out, n_shards) if run.resumed else set()
        if done:
            log.info("resuming: %d of %d shards already complete", len(done), n_shards)
        todo = [k for k in range(n_shards) if k not in done]

        workers = default_workers(device) if config.workers is None else config.workers
        job = ShardJob(out=out.absolute(), record=record, device=device, n_items=n_items,
                       workers=workers)
        cluster: dict[str, Any] | None = None
        if scale is None:
            progress.start("embed", total=n_items, unit="images")
            progress.advance(sum(shard_items(k, shard_size, n_items) for k in done))
            computed = ShardEncoder(job, src, refs, enc).run(todo, progress)
        else:
            computed, cluster = _encode_on_ray(job, todo, done, scale, progress)
        missing = sorted(set(range(n_shards)) - completed_shards(out, n_shards))
        if missing:
            raise RuntimeError(f"embed: shards {missing[:5]} of {n_shards} were not written")

        manifest = assemble_manifest(out, n_shards, record, enc, src, refs)
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


def _auto_precision(out: Path, enc: Encoder, device: str, batch_size: int) -> str:
    """``--precision auto`` on a CPU with native bf16: the precision an unfinished run in
    ``out`` recorded (a new trial could choose the other one, and the run's identity, which
    decides the bytes, would no longer match), else a timed trial of this encoder's forward
    pass (:func:`pairmine.embed.runner.choose_embed_precision`)."""

    started = out / stores.PARTIAL_DIR / stores.RUN_FILE
    if started.is_file():
        try:
            recorded = stores.read_json(started).get("config", {}).get("precision")
        except StoreError:
            recorded = None
        if recorded in TRIAL_CANDIDATES:
            log.info("precision %s: the unfinished run in %s chose it", recorded, out)
            return str(recorded)
    return choose_embed_precision(enc, device, "auto", batch_size).precision


class ShardWorker:
    """The embed unit on Ray: an actor that loads the encoder once (``ShardEncoder.open``)
    and encodes the shards it is given through the single-machine :meth:`ShardEncoder.run`,
    batches formed inside the shard with the run's batch size (never by Ray)."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.encoder = ShardEncoder.open(job)

    def __call__(self, shard: int) -> dict[str, Any]:
        from pairmine.scale.executor import unit_progress

        # the fault hook (tests) may kill the worker after the shard's first batch
        images = self.encoder.run([shard], unit_progress())
        r = self.job.record
        return {"images": images, "progress": shard_items(shard, r.shard_size,
                                                            self.job.n_items)}


def _encode_on_ray(job: ShardJob, todo: list[int], done: set[int], scale: RayOptions,
                   progress: Progress) -> tuple[int, dict[str, Any]]:
    """The shards ``todo`` on Ray actors (one per GPU, or per ``--cpus-per-worker``); a dead
    actor is restarted and its shard retried. Returns the images encoded and the report."""
    from pairmine.scale.executor import execute

    r = job.record
    source = Path(r.source)
    computed = 0

    def finished(shard: int, result: dict[str, Any]) -> None:
        nonlocal computed
        computed += int(result["images"])

    report = execute(todo, ShardWorker, job, scale, progress, stage="embed",
                     unit_label="images", total=job.n_items,
                     done=sum(shard_items(k, r.shard_size, job.n_items) for k in done),
                     on_done=finished, write=job.out,
                     see=[source] if source.exists() else [],  # a folder or a file list
                     actor=True, unit_name="embed shard",
                     memory_hint="lower --batch-size or --workers (decode workers), run fewer "
                                 "--ray-workers per node, or give each more memory")
    assert report is not None
    report.resumed = len(done)
    return computed, report.to_json()


def default_workers(device: str) -> int:
    """DataLoader decode workers when ``--workers`` is not given."""
    cores = cpu_count()
    # on CUDA the model runs on the GPU, so decoding may take every core; on the CPU the
    # model needs the cores too, so decode with fewer
    return min(16, cores) if device.startswith("cuda") else min(4, max(1, cores // 2))
