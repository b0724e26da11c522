"""``pairmine.export``: a pairs store (and the originals it points at) into an SPPS export.

Two formats, one registry (``export.formats``; their writers are here): ``parquet`` writes
``spps.parquet`` (pairs that point at the original files); ``webdataset`` also writes tar
shards holding the original encoded bytes, ready for any WebDataset trainer. ``combined``
adds every image of the embeddings store as a single-image sample: the paper's merged
training set (SePP-ID, Fig. 6).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairmine import stores
from pairmine.errors import ConfigError, SourceError
from pairmine.export import layout as lay
from pairmine.export.config import ExportConfig
from pairmine.export.fetch import Fetcher, describe_problems
from pairmine.export.formats import EXPORT_FORMATS
from pairmine.export.plan import SAMPLE_IMAGE, SAMPLE_PAIR, Plan, make_plan
from pairmine.export.prefetch import Prefetcher
from pairmine.export.shards import ShardRecord, StoppedAt, write_shards
from pairmine.export.tables import images_table, pairs_table
from pairmine.progress import NullProgress, Progress
from pairmine.stores.export import (
    ExportCounts,
    ExportFile,
    ExportInputs,
    ExportManifest,
    ExportOptionsRecord,
    InputRecord,
    Problem,
    read_shard_index,
)

log = logging.getLogger(__name__)


@dataclass
class Written:
    """What a format writer produced."""

    shards: list[ShardRecord] = field(default_factory=list)
    resumed_shards: int = 0
    files: dict[str, ExportFile] = field(default_factory=dict)
    pairs: int = 0
    images: int = 0
    skipped: list[Problem] = field(default_factory=list)
    skipped_pairs: int = 0
    skipped_images: int = 0
    bytes: int = 0  # tar bytes written (shards), or source bytes checked (parquet)
    cluster: dict[str, Any] | None = None  # with Ray: units per node, retried units, nodes


@dataclass
class ExportResult:
    path: Path
    format: str
    pairs: int
    images: int
    samples: int
    shards: int
    resumed_shards: int
    bytes: int
    seconds: float
    skipped: list[Problem]
    skipped_pairs: int
    skipped_images: int
    cluster: dict[str, Any] | None = None  # with Ray: units per node, retried units, nodes

    @property
    def mb_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def export(pairs: str | Path, out: str | Path, config: ExportConfig | None = None, *,
           overwrite: bool = False, progress: Progress | None = None,
           **options: Any) -> ExportResult:
    """Export the pairs of ``pairs`` (a pairs store) to ``out``.

    ``config`` is an :class:`ExportConfig`; its fields may also be given as keyword arguments
    (``export(pairs, out, fmt="parquet")``), which override those of ``config``.
    ``shuffle`` defaults to on for combined shard exports (images and pairs interleaved by
    ``seed``) and off otherwise. Source images that vanished or changed since embed stop the
    export with an error listing them; with ``skip_missing`` the samples that use them are
    left out and listed in the manifest. An interrupted export resumes after its last
    complete shard when run again with the same options.

    ``ray`` (``"auto"``, ``"local"`` or a cluster address) writes the WebDataset shards as
    Ray tasks (``ray_workers`` at a time, each with ``gpus_per_worker``/``cpus_per_worker``,
    retried ``max_retries`` times), byte-identical to an export written without Ray.
    """
    config = ExportConfig.build(config, options)
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    config.ray_options()  # checks the Ray options and reaches the head before touching `out`
    run_config = config.resolved()
    pairs_path, out = Path(pairs), Path(out)
    plan = make_plan(pairs_path, combined=run_config.combined,
                     shuffle=bool(run_config.shuffle), seed=run_config.seed)
    inputs = {"pairs": stores.input_record(pairs_path),
              "embeddings": stores.input_record(plan.embeddings_path)}
    if out.resolve() in (plan.pairs_path, plan.embeddings_path):
        raise ConfigError(f"output {out} is an input store", "choose another output path")

    identity = {**run_config.recorded(),
                "pairs_manifest_sha256": inputs["pairs"]["manifest_sha256"]}
    with stores.begin_run(out, stores.EXPORT_FORMAT, {"config": identity},
                          overwrite=overwrite) as run:
        if run.resumed:
            log.info("resuming the unfinished export in %s", out)
        layout = EXPORT_FORMATS.get(run_config.fmt)
        fetcher = Fetcher(plan.source_kind, plan.images, cache_bytes=layout.cache_bytes)
        written = layout.write(out, plan, fetcher, run_config, run_config.skip_missing,
                               progress)
        seconds = time.perf_counter() - t0
        manifest = _manifest(run_config, inputs, plan, written)
        # the dataset card (README.md) before the manifest: a finished export has both
        from pairmine.export.card import CARD_KEY, write_card

        card = write_card(out, manifest, license=run_config.license)
        run.finish({**manifest.to_json(), CARD_KEY: card})
    log.info("exported %d pairs and %d images to %s in %.1f s", written.pairs, written.images,
             out, seconds)
    samples = written.pairs + written.images
    return ExportResult(path=out, format=run_config.fmt, pairs=written.pairs,
                        images=written.images, samples=samples, shards=len(written.shards),
                        resumed_shards=written.resumed_shards, bytes=written.bytes,
                        seconds=seconds, skipped=written.skipped,
                        skipped_pairs=written.skipped_pairs, cluster=written.cluster,
                        skipped_images=written.skipped_images)


def _manifest(config: ExportConfig, inputs: dict[str, Any], plan: Plan,
              written: Written) -> ExportManifest:
    """The export's manifest. It holds no timings: a re-run or a resumed run writes the very
    same manifest."""
    samples = written.pairs + written.images
    return ExportManifest(
        class_names=None if plan.class_names is None else tuple(plan.class_names),
        config=ExportOptionsRecord(**{**config.recorded(), "skip_missing": config.skip_missing}),
        counts=ExportCounts(
            bytes=written.bytes if config.shards else 0, images=written.images,
            images_in_store=len(plan.images), pairs=written.pairs,
            pairs_both_orders=2 * written.pairs, pairs_in_store=plan.pairs, samples=samples,
            skipped_images=written.skipped_images, skipped_pairs=written.skipped_pairs),
        export_format=config.fmt,
        files=written.files,
        inputs=ExportInputs(embeddings=InputRecord(**inputs["embeddings"]),
                            pairs=InputRecord(**inputs["pairs"])),
        pairmine_version=stores.pairmine_version(),
        shards=tuple(s.as_export_shard() for s in written.shards),
        skipped=tuple(written.skipped),
        source=plan.source,
        version=stores.FORMAT_VERSION,
    )


def _stop(out: Path, plan: Plan, fetcher: Fetcher, start: int, progress: Progress) -> SourceError:
    """Check every image the rest of the plan needs, so the error lists all bad files at once."""
    import numpy as np

    kinds, refs = plan.kinds[start:], plan.refs[start:]
    pair_ids = refs[kinds == SAMPLE_PAIR]
    ids = np.unique(np.concatenate([refs[kinds == SAMPLE_IMAGE], plan.pair_a[pair_ids],
                                    plan.pair_b[pair_ids]]))
    progress.start("checking the remaining sources", total=int(ids.shape[0]), unit="images")
    for i in ids.tolist():
        fetcher.get(i)
        progress.advance(1)
    progress.finish()
    return _problems_error(out, sorted(fetcher.problems.values(), key=lambda p: p.id))


def _problems_error(out: Path, problems: list[Problem]) -> SourceError:
    listing = out / stores.PARTIAL_DIR / lay.PROBLEMS_FILE
    stores.write_json_atomic(listing, [p.to_json() for p in problems])
    return SourceError(
        f"{len(problems)} source image(s) changed or vanished since embed: "
        f"{describe_problems(problems)}",
        f"restore them, or pass --skip-missing to leave out the samples that use them; full "
        f"list in {listing}; the export is unfinished (no manifest)")


# ---------------------------------------------------------------------------------------------
# formats


def write_webdataset(out: Path, plan: Plan, fetcher: Fetcher, config: ExportConfig,
                     skip_missing: bool, progress: Progress) -> Written:
    """Tar shards of the original bytes, here or (``config.ray``) as Ray tasks, then the
    tables saying where every sample landed. ``config`` is resolved."""
    import numpy as np

    cluster = None
    try:
        if config.ray is None:
            shards, resumed = write_shards(out, plan, fetcher, config.limits(),
                                           skip_missing=skip_missing, progress=progress)
        else:
            from pairmine.scale.export import write_shards_on_ray

            shards, resumed, cluster = write_shards_on_ray(out, plan, config,
                                                           progress=progress)
    except StoppedAt as stop:
        raise _stop(out, plan, fetcher, stop.position, progress) from None

    # where every sample landed, from the indexes (this run's and resumed shards alike)
    pair_ids: list[int] = []
    pair_at: list[tuple[str, str]] = []
    image_ids: list[int] = []
    image_at: list[tuple[str, str]] = []
    for s in shards:
        index = read_shard_index(out, s.number, s.as_export_shard())
        tar = lay.shard_tar(s.number)
        for key, kind, pid, a in zip(*(index.column(c).to_pylist()
                                       for c in ("key", "kind", "pair_id", "a")), strict=True):
            if kind == lay.KIND_PAIR:
                pair_ids.append(pid)
                pair_at.append((tar, key))
            else:
                image_ids.append(a)
                image_at.append((tar, key))

    written = Written(shards=shards, resumed_shards=resumed, pairs=len(pair_ids),
                      images=len(image_ids), bytes=sum(s.bytes for s in shards),
                      cluster=cluster)
    order = np.argsort(np.asarray(pair_ids, dtype=np.int64), kind="stable")
    table = pairs_table(plan, np.asarray(pair_ids, dtype=np.int64)[order],
                        [pair_at[i][0] for i in order], [pair_at[i][1] for i in order])
    written.files[lay.SPPS_FILE] = _write_table(out, lay.SPPS_FILE, table)
    if config.combined:
        order = np.argsort(np.asarray(image_ids, dtype=np.int64), kind="stable")
        table = images_table(plan, np.asarray(image_ids, dtype=np.int64)[order],
                             [image_at[i][0] for i in order], [image_at[i][1] for i in order])
        written.files[lay.IMAGES_FILE] = _write_table(out, lay.IMAGES_FILE, table)

    problems: dict[int, Problem] = {}
    for s in shards:
        problems.update((p.id, p) for p in s.skipped)
        written.skipped_pairs += s.skipped_pairs
        written.skipped_images += s.skipped_images
    written.skipped = sorted(problems.values(), key=lambda p: p.id)
    return written


def write_parquet(out: Path, plan: Plan, fetcher: Fetcher, config: ExportConfig,
                  skip_missing: bool, progress: Progress) -> Written:
    """Pairs that point at the original files. Every image they use is read once and its
    hash checked, so the table never points at a file that changed since embed."""
    import numpy as np

    n = len(plan.images)
    ids = np.arange(n) if config.combined else np.unique(np.concatenate([plan.pair_a,
                                                                          plan.pair_b]))
    checked = 0
    progress.start("checking sources", total=int(ids.shape[0]), unit="images")
    with Prefetcher(lambda k: fetcher.get(int(ids[k])), 0, int(ids.shape[0])) as ahead:
        for k in range(int(ids.shape[0])):
            got = ahead.get(k)
            checked += 0 if isinstance(got, Problem) else len(got.data)
            progress.advance(1)
    progress.finish()
    problems = sorted(fetcher.problems.values(), key=lambda p: p.id)
    if problems and not skip_missing:
        raise _problems_error(out, problems)

    bad = np.zeros(n, dtype=bool)
    bad[[p.id for p in problems]] = True
    keep = np.flatnonzero(~(bad[plan.pair_a] | bad[plan.pair_b]))
    written = Written(pairs=int(keep.shape[0]), skipped=problems, bytes=checked,
                      skipped_pairs=plan.pairs - int(keep.shape[0]))
    none = [None] * int(keep.shape[0])
    written.files[lay.SPPS_FILE] = _write_table(out, lay.SPPS_FILE,
                                                pairs_table(plan, keep, none, none))
    if config.combined:
        image_ids = np.flatnonzero(~bad)
        written.images = int(image_ids.shape[0])
        written.skipped_images = n - written.images
        none = [None] * written.images
        written.files[lay.IMAGES_FILE] = _write_table(out, lay.IMAGES_FILE,
                                                      images_table(plan, image_ids, none, none))
    return written


def _write_table(out: Path, name: str, table: Any) -> ExportFile:
    stores.write_parquet_atomic(out / name, table)
    return ExportFile(rows=table.num_rows, sha256=stores.sha256_file(out / name))
