"""``pairmine.export``: a pairs store (and the originals it points at) into an SPPS export.

Two formats, one registry (``export.formats``; their writers are here): ``parquet`` writes
``spps.parquet`` (pairs that point at the original files); ``webdataset`` also writes tar
shards holding the original encoded bytes, ready for any WebDataset trainer. ``combined``
adds every image of the embeddings store as a single-image sample: the paper's merged
training set (SePP-ID, Fig. 6).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pairmine import stores
from pairmine.errors import ConfigError, SourceError, StoreError
from pairmine.export import layout as lay
from pairmine.export.config import ExportConfig
from pairmine.export.fetch import Fetcher, problems_error
from pairmine.export.formats import EXPORT_FORMATS
from pairmine.export.plan import WINDOW, Plan, StoreCatalogue, make_plan
from pairmine.export.prefetch import Prefetcher
from pairmine.export.shards import (
    ShardLimits,
    ShardRecord,
    StoppedAt,
    finished_shard,
    remove_strays,
    sample_size,
    shard_bounds,
    write_one_shard,
    write_shards,
)
from pairmine.export.tables import write_images_table, write_pairs_table
from pairmine.progress import NullProgress, Progress
from pairmine.scale.cluster import connect
from pairmine.scale.executor import execute
from pairmine.scale.options import RayOptions
from pairmine.sources.roots import ImageRoots
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

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Written:
    """What a format writer produced."""

    shards: list[ShardRecord] = field(default_factory=list)
    pairs_view: list[ShardRecord] = field(default_factory=list)  # combined: the pairs alone
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
    pairs_view_shards: int = 0  # combined shard exports: the pairs alone, in pairs/shards
    pairs_view_bytes: int = 0

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
    _check_has_images(plan)

    identity = {**run_config.recorded(),
                "pairs_manifest_sha256": inputs["pairs"]["manifest_sha256"]}
    with stores.begin_run(out, stores.EXPORT_FORMAT, {"config": identity},
                          overwrite=overwrite) as run:
        if run.resumed:
            log.info("resuming the unfinished export in %s", out)
        layout = EXPORT_FORMATS.get(run_config.fmt)
        fetcher = Fetcher(plan.source_kind, plan.images, cache_bytes=layout.cache_bytes,
                          roots=run_config.image_roots())
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
                        skipped_images=written.skipped_images,
                        pairs_view_shards=len(written.pairs_view),
                        pairs_view_bytes=sum(s.bytes for s in written.pairs_view))


def _check_has_images(plan: Plan) -> None:
    """An export writes (or points at) the images: a store imported from embeddings alone
    has none, which one line says up front instead of a problem per image. Rows whose file
    was missing at import (some, not all) are problems of their own, as for any source."""
    import pyarrow.compute as pc

    from pairmine.sources.imported import NAME as IMPORTED

    if plan.source_kind != IMPORTED or plan.pairs == 0:
        return
    # shard by shard, the source column only, up to the first row that names a file
    for _, meta in stores.open_embeddings(plan.embeddings_path).iter_meta(["source"]):
        if pc.any(pc.fill_null(pc.not_equal(meta.column("source"), ""), False)).as_py():
            return
    raise SourceError(f"the embeddings store {plan.embeddings_path} was imported without "
                      "image files (no row names an image), so there are no images to "
                      "export", "`pairmine pairs PAIRS --format csv` lists the pairs by key; "
                      "to export them, import with --image-column naming each row's image "
                      "file")


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
        pairs_view=tuple(s.as_export_shard(lay.PAIRS_VIEW_DIR) for s in written.pairs_view),
    )


def _stop(out: Path, plan: Plan, fetcher: Fetcher, start: int, progress: Progress) -> SourceError:
    """Check every image the rest of the plan needs, so the error lists all bad files at once
    (a window of positions at a time: the image metadata is read by window)."""
    catalogue = plan.images
    progress.start("checking the remaining sources", total=plan.samples - start,
                   unit="samples")
    for lo in range(start, plan.samples, WINDOW):
        hi = min(lo + WINDOW, plan.samples)
        if isinstance(catalogue, StoreCatalogue):
            catalogue.touch(lo)
        for i in sorted(set(plan.image_ids(lo, hi).tolist())):
            fetcher.get(i)
        progress.advance(hi - lo)
    progress.finish()
    return _problems_error(out, sorted(fetcher.problems.values(), key=lambda p: p.id))


def _problems_error(out: Path, problems: list[Problem]) -> SourceError:
    listing = out / stores.PARTIAL_DIR / lay.PROBLEMS_FILE
    stores.write_json_atomic(listing, [p.to_json() for p in problems])
    return problems_error(problems, listing)


# ---------------------------------------------------------------------------------------------
# formats


def write_webdataset(out: Path, plan: Plan, fetcher: Fetcher, config: ExportConfig,
                     skip_missing: bool, progress: Progress) -> Written:
    """Tar shards of the original bytes, here or (``config.ray``) as Ray tasks, then the
    tables saying where every sample landed. ``config`` is resolved."""
    import numpy as np
    import pyarrow.compute as pc

    options = config.ray_options()
    # with Ray, one connection for both series (--ray local starts its cluster once)
    with connect(options) if options is not None else nullcontext():
        shards, resumed, cluster = _write_series(out, out, plan, fetcher, config,
                                                 skip_missing, progress)
        view: list[ShardRecord] = []
        if config.combined:
            # the pairs alone, in pair order, in shards of their own (``PAIRS_VIEW_DIR``):
            # the combined shards mix pairs and images (shuffled for streaming trainers),
            # and a reader of the pairs alone needs files holding nothing else. Same
            # writer, so the same bytes per sample, resumable and byte-identical on Ray.
            alone = replace(config, combined=False, shuffle=False)
            view_plan = make_plan(plan.pairs_path, combined=False, shuffle=False,
                                  seed=config.seed)
            # (its resumed shards are not counted: `resumed_shards` is of the combined ones)
            view, _, _ = _write_series(out, out / lay.PAIRS_VIEW_DIR, view_plan, fetcher,
                                       alone, skip_missing, progress)
            # the Ray executor's attempt records; the export's own .partial goes at finish
            shutil.rmtree(out / lay.PAIRS_VIEW_DIR / stores.PARTIAL_DIR, ignore_errors=True)

    # where every sample landed, from the indexes (this run's and resumed shards alike), one
    # shard at a time: a shard number per pair (and per image, combined), -1 where skipped
    pair_shard = np.full(plan.pairs, -1, dtype=np.int32)
    image_shard = np.full(plan.n_images, -1, dtype=np.int32) if config.combined else None
    for s in shards:
        index = read_shard_index(out, s.number, s.as_export_shard()).select(
            ["kind", "pair_id", "a"])
        is_pair = pc.equal(index.column("kind"), lay.KIND_PAIR)
        pair_shard[index.filter(is_pair).column("pair_id").to_numpy()] = s.number
        if image_shard is not None:
            image_shard[index.filter(pc.invert(is_pair)).column("a").to_numpy()] = s.number

    written = Written(shards=shards, resumed_shards=resumed,
                      pairs=int(np.count_nonzero(pair_shard >= 0)),
                      images=0 if image_shard is None else int(np.count_nonzero(
                          image_shard >= 0)),
                      bytes=sum(s.bytes for s in shards), cluster=cluster, pairs_view=view)
    if view and sum(s.pairs for s in view) != written.pairs:
        raise StoreError(f"the pairs view of {out} holds {sum(s.pairs for s in view)} pairs, "
                         f"the combined shards {written.pairs}", "rerun the export with "
                         "--overwrite")
    written.files[lay.SPPS_FILE] = _table_file(out, lay.SPPS_FILE, write_pairs_table(
        out / lay.SPPS_FILE, plan, pair_shard >= 0, pair_shard))
    if image_shard is not None:
        written.files[lay.IMAGES_FILE] = _table_file(out, lay.IMAGES_FILE, write_images_table(
            out / lay.IMAGES_FILE, plan, image_shard >= 0, image_shard))

    problems: dict[int, Problem] = {}
    for s in shards:
        problems.update((p.id, p) for p in s.skipped)
        written.skipped_pairs += s.skipped_pairs
        written.skipped_images += s.skipped_images
    written.skipped = sorted(problems.values(), key=lambda p: p.id)
    return written


def _write_series(out: Path, series: Path, plan: Plan, fetcher: Fetcher, config: ExportConfig,
                  skip_missing: bool, progress: Progress
                  ) -> tuple[list[ShardRecord], int, dict[str, Any] | None]:
    """One series of shards in ``series/shards`` (``series`` is the export ``out`` or a
    folder in it), here or on Ray: the shards, how many an earlier run had finished, and the
    cluster report (Ray)."""
    series.mkdir(parents=True, exist_ok=True)  # Ray's nodes check they can write there
    try:
        if config.ray is None:
            shards, resumed = write_shards(series, plan, fetcher, config.limits(),
                                           skip_missing=skip_missing, progress=progress)
            return shards, resumed, None
        return write_shards_on_ray(series, plan, config, progress=progress)
    except StoppedAt as stop:
        raise _stop(out, plan, fetcher, stop.position, progress) from None


def write_parquet(out: Path, plan: Plan, fetcher: Fetcher, config: ExportConfig,
                  skip_missing: bool, progress: Progress) -> Written:
    """Pairs that point at the original files. Every image they use is read once and its
    hash checked, so the table never points at a file that changed since embed."""
    import numpy as np

    n = plan.n_images
    # every image of the store (combined, by range), or those the pairs use (O(P))
    used = None if config.combined else np.unique(np.concatenate([plan.pair_a, plan.pair_b]))
    count = n if used is None else int(used.shape[0])

    def ids_of(lo: int, hi: int) -> np.ndarray:
        return np.arange(lo, hi, dtype=np.int64) if used is None else used[lo:hi]

    catalogue = plan.images
    if isinstance(catalogue, StoreCatalogue):
        catalogue.follow(ids_of, count)

    def check(k: int) -> Any:
        if isinstance(catalogue, StoreCatalogue):
            catalogue.touch(k)
        return fetcher.get(k if used is None else int(used[k]))

    checked = 0
    progress.start("checking sources", total=count, unit="images")
    with Prefetcher(check, 0, count) as ahead:
        for k in range(count):
            got = ahead.get(k)
            checked += 0 if isinstance(got, Problem) else len(got.data)
            progress.advance(1)
    progress.finish()
    problems = sorted(fetcher.problems.values(), key=lambda p: p.id)
    if problems and not skip_missing:
        raise _problems_error(out, problems)

    bad = np.asarray([p.id for p in problems], dtype=np.int64)
    keep = ~(np.isin(plan.pair_a, bad) | np.isin(plan.pair_b, bad))
    kept = int(np.count_nonzero(keep))
    written = Written(pairs=kept, skipped=problems, bytes=checked,
                      skipped_pairs=plan.pairs - kept)
    written.files[lay.SPPS_FILE] = _table_file(out, lay.SPPS_FILE, write_pairs_table(
        out / lay.SPPS_FILE, plan, keep, None))
    if config.combined:
        written.images = n - int(bad.shape[0])
        written.skipped_images = int(bad.shape[0])
        written.files[lay.IMAGES_FILE] = _table_file(out, lay.IMAGES_FILE, write_images_table(
            out / lay.IMAGES_FILE, plan, _ImagesKept(bad), None))
    return written


class _ImagesKept:
    """``keep[lo:hi]`` over image ids, from the sorted ids of the images with problems (no
    mask of N)."""

    def __init__(self, bad: np.ndarray) -> None:
        self._bad = bad

    def __getitem__(self, key: slice) -> np.ndarray:
        import numpy as np

        ids = np.arange(key.start, key.stop, dtype=np.int64)
        return ~np.isin(ids, self._bad)


def _table_file(out: Path, name: str, rows: int) -> ExportFile:
    return ExportFile(rows=rows, sha256=stores.sha256_file(out / name))


# ---------------------------------------------------------------------------------------------
# on Ray: one unit per output shard, through pairmine.scale.executor


@dataclass(frozen=True)
class ExportJob:
    """What a unit needs to rebuild the run's plan and write any shard: paths and options."""

    out: Path
    pairs: Path
    combined: bool
    shuffle: bool
    seed: int
    limits: ShardLimits
    skip_missing: bool
    cache_bytes: int
    pairs_manifest_sha256: str
    image_root: tuple[str, ...] = ()  # --image-root OLD=NEW: where moved images are now


_OPENED: dict[tuple[Any, ...], tuple[Plan, Fetcher]] = {}  # per worker process: the last run's


def _opened(job: ExportJob) -> tuple[Plan, Fetcher]:
    key = (str(job.pairs), job.pairs_manifest_sha256, job.combined, job.shuffle, job.seed)
    if key not in _OPENED:
        if stores.sha256_file(job.pairs / stores.MANIFEST) != job.pairs_manifest_sha256:
            raise StoreError(f"the pairs store {job.pairs} changed since this export started",
                             "rerun export")
        _OPENED.clear()
        plan = make_plan(job.pairs, combined=job.combined, shuffle=job.shuffle, seed=job.seed)
        _OPENED[key] = (plan, Fetcher(plan.source_kind, plan.images,
                                      cache_bytes=job.cache_bytes,
                                      roots=ImageRoots.parse(job.image_root)))
    return _OPENED[key]


def size_unit(job: ExportJob, chunk: tuple[int, int, int]) -> dict[str, Any]:
    """A unit of the sizing pass: the tar size of samples ``[lo, hi)`` (-1: problems, listed
    by position as JSON)."""
    import numpy as np

    _, lo, hi = chunk
    plan, fetcher = _opened(job)
    sizes = np.empty(hi - lo, dtype=np.int64)
    problems: dict[int, Any] = {}
    for p in range(lo, hi):
        size, found = sample_size(plan, fetcher, p)
        sizes[p - lo] = size
        if found:
            problems[p] = [x.to_json() for x in found]
    return {"sizes": sizes, "problems": problems}


def shard_unit(job: ExportJob, shard: tuple[int, int, int]) -> dict[str, Any]:
    """A unit: write shard ``number`` over the planned positions ``[start, stop)``."""
    from pairmine.scale.executor import fault_point

    number, start, stop = shard
    plan, fetcher = _opened(job)
    fault_point()  # the fault hook (tests) may kill the worker here, the shard not written
    record = write_one_shard(job.out, number, (start, stop), plan, fetcher, job.limits,
                             skip_missing=job.skip_missing)
    return {"record": record}


EXPORT_MEMORY_HINT = ("lower --max-shard-bytes or --shard-size, run fewer --ray-workers per "
                      "node, or give each more memory (--cpus-per-worker)")


def write_shards_on_ray(out: Path, plan: Plan, config: ExportConfig, *,
                        progress: Progress) -> tuple[list[ShardRecord], int, dict[str, Any]]:
    """Every shard of the export, written by Ray tasks as ``config`` (resolved, with ``ray``
    set) says: the single-machine writer per shard, so byte-identical. Returns the shards (in
    order), how many an earlier run had finished, and the cluster report. Raises
    ``StoppedAt`` at the first sample with problems when they are not to be skipped, as the
    in-order writer does."""
    options = config.ray_options()
    if options is None:
        raise ConfigError("the export's shards go to Ray only with --ray",
                          "give --ray auto, local or HOST:PORT")
    job = ExportJob(out=out.absolute(), pairs=plan.pairs_path, combined=config.combined,
                    shuffle=bool(config.shuffle), seed=config.seed, limits=config.limits(),
                    skip_missing=config.skip_missing,
                    cache_bytes=EXPORT_FORMATS.get(config.fmt).cache_bytes,
                    pairs_manifest_sha256=stores.sha256_file(plan.pairs_path / stores.MANIFEST),
                    image_root=config.image_root)
    spec = Path(str(plan.source.get("spec", "")))
    read = [plan.pairs_path, plan.embeddings_path]
    see = [spec] if spec.is_absolute() and spec.exists() else []
    records: dict[int, ShardRecord] = {}

    def finished(unit: tuple[int, int, int], result: dict[str, Any]) -> None:
        records[unit[0]] = result["record"]

    # one connection for both passes (--ray local starts its cluster once)
    with connect(options):
        bounds = _plan_bounds(job, plan.samples, options, progress, read, see)
        for number, (_, stop) in enumerate(bounds):
            found = finished_shard(job.out, number)
            if found is not None and found.next_position == stop:
                records[number] = found
        resumed = len(records)
        todo = [(k, start, stop) for k, (start, stop) in enumerate(bounds) if k not in records]
        report = execute(todo, shard_unit, job, options, progress, stage="export",
                         unit_label="shards", total=len(bounds), done=resumed,
                         on_done=finished, read=read, write=job.out, see=see,
                         unit_name="export shard", memory_hint=EXPORT_MEMORY_HINT)
    assert report is not None
    remove_strays(job.out, len(bounds))
    return [records[k] for k in range(len(bounds))], resumed, report.to_json()


SIZE_CHUNKS_PER_WORKER = 4


def _plan_bounds(job: ExportJob, samples: int, options: RayOptions, progress: Progress,
                 read: list[Path], see: list[Path]) -> list[tuple[int, int]]:
    """The shards' ``(first, next)`` sample positions, cut as the in-order writer cuts: with
    a byte limit or ``--skip-missing`` from every sample's tar size, measured by Ray tasks
    over chunks of positions (8 bytes a sample on the driver)."""
    import numpy as np

    limits = job.limits
    if limits.bytes is None and not job.skip_missing:
        # only the sample count cuts; a sample with problems stops the export in its shard
        return [(s, min(s + limits.samples, samples)) for s in range(0, samples, limits.samples)]
    workers = options.workers or 2
    chunk = max(256, -(-samples // (SIZE_CHUNKS_PER_WORKER * workers)))
    chunks = [(i, lo, min(lo + chunk, samples)) for i, lo in enumerate(range(0, samples, chunk))]
    sizes = np.zeros(samples, dtype=np.int64)
    problems: dict[int, Any] = {}

    def sized(unit: tuple[int, int, int], result: dict[str, Any]) -> None:
        sizes[unit[1]:unit[2]] = result["sizes"]
        problems.update(result["problems"])

    execute(chunks, size_unit, job, options, progress, stage="export sizes",
            unit_label="chunks", total=len(chunks), on_done=sized, read=read, see=see,
            unit_name="export sizing chunk", memory_hint=EXPORT_MEMORY_HINT)
    try:
        return shard_bounds(cast("Sequence[int]", sizes), limits, skip_missing=job.skip_missing)
    except ValueError as stop:
        position = int(stop.args[0])
        raise StoppedAt(Problem(**problems[position][0]), position) from None
