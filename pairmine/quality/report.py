"""``show``: a self-contained static HTML report for looking at pairs with one's own eyes.

reader → mapper → writer: choose the pairs of each view (highest scores, a seeded random
sample, lowest scores, label mismatches), read each image once from its original source
(``pairmine.sources.ref_reader``), write a thumbnail under ``OUT/thumbs/`` (or inline it as a
data URI), and write ``OUT/index.html`` last, atomically: a folder without it is not a report.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import ConfigError, PairmineError, SourceError, StoreError
from pairmine.quality.page import CSS, JS, TEMPLATE, html_attr, html_text, script_json
from pairmine.sources.roots import ImageRoots

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from pairmine.progress import Progress
    from pairmine.quality.accuracy import ClassAccuracy
    from pairmine.quality.labels import Labels
    from pairmine.stores import Embeddings, Pairs

log = logging.getLogger(__name__)

INDEX = "index.html"
THUMBS = "thumbs"
# formats every browser shows as they are; anything else is re-encoded
WEB_FORMATS = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png",
               "gif": "image/gif", "webp": "image/webp"}


@dataclass
class ShowResult:
    out: Path
    index: Path
    pairs: int  # pairs in the store
    shown: int  # distinct pairs in the report
    images: int  # distinct images shown
    missing: list[str] = field(default_factory=list)  # keys whose image could not be read
    missing_files: int = 0  # of those, rows that name no image file (imported without one)
    views: dict[str, int] = field(default_factory=dict)
    mismatches: int | None = None  # labelled pairs whose labels differ (whole store)
    labelled: int = 0
    selected: int | None = None  # pairs that --class / --key kept (None: no filter)


def show(pairs: str | Path, out: str | Path, *, per_view: int = 500, page_size: int = 50,
         seed: int = 0, thumb_px: int = 128, inline: bool = False,
         labels: str | Path | None = None, overwrite: bool = False,
         only_class: str | None = None, only_key: str | None = None,
         image_root: Sequence[str] = (), progress: Progress | None = None) -> ShowResult:
    """Write ``OUT/index.html``: pairs side by side, views, paging, score histogram, summary,
    per-class pair accuracy. ``only_class`` / ``only_key`` keep the pairs with an image of that
    class (its name or number) / with that key in the views; the summary, the per-class table
    and the histogram still describe the whole store."""
    import numpy as np

    from pairmine import stores
    from pairmine.quality.accuracy import pair_accuracy
    from pairmine.quality.labels import load_labels, pairs_scope

    if per_view < 1 or page_size < 1:
        raise ConfigError("--per-view and --page-size must be >= 1")
    if not 16 <= thumb_px <= 1024:
        raise ConfigError(f"--thumb {thumb_px} is outside [16, 1024] pixels")
    roots = ImageRoots.parse(image_root)  # where moved images are now (checked before OUT)
    store = stores.open_pairs(pairs)
    emb = stores.open_pairs_embeddings(store)
    lab = load_labels(emb, labels, required=False)
    out = Path(out)
    _prepare(out, overwrite=overwrite)

    a = store.table.column("a").to_numpy()
    b = store.table.column("b").to_numpy()
    score = store.table.column("score").to_numpy().astype(np.float32)
    same = _same_labels(a, b, lab)
    scope = pairs_scope(store, len(emb))
    per_class = [] if lab is None else \
        pair_accuracy(a, b, lab.codes, scope.is_anchor(), lab.name).per_class
    keep, what = _selection(emb, a, b, lab, only_class, only_key)
    views = _views(score, same, per_view, seed, keep)
    chosen = np.unique(np.concatenate([v for v, _, _ in views.values()]).astype(np.int64))
    position = {int(p): i for i, p in enumerate(chosen)}
    image_ids = np.unique(np.concatenate([a[chosen], b[chosen]]))

    thumbs_dir = out / THUMBS
    images, missing, unfiled = _thumbnails(emb, image_ids, lab, thumbs_dir,
                                           thumb_px=thumb_px, inline=inline,
                                           progress=progress, roots=roots)
    data = {
        "pageSize": page_size,
        "pairs": [[int(a[p]), int(b[p]), float(score[p]),
                   None if same[p] < 0 else int(same[p])] for p in chosen],
        "views": {name: {"title": title, "note": note,
                         "pairs": [position[int(p)] for p in idx]}
                  for name, (idx, title, note) in views.items()},
        "images": images,
    }
    labelled = int(np.sum(same >= 0))
    mismatches = int(np.sum(same == 0)) if lab is not None else None
    selected = None if keep is None else int(keep.size)
    summary = _summary(store, emb, scope.anchors.size, lab, labelled, mismatches,
                       len(chosen), len(missing), what, selected)
    summary += class_table(per_class)
    warning = ""
    if missing:
        warning = (f'<p class="warning" id="pm-missing">{len(missing)} of {len(image_ids)} '
                   f"images could not be read from their source (e.g. "
                   f"{html_text(missing[0])}); they show as “missing”.</p>")
    page = render_page(
        title=report_title(store.path, a.size, (store.info.min, store.info.max)),
        subtitle=f"{store.path.resolve()} · embeddings {emb.path.resolve()}",
        summary=summary, histogram=histogram_svg(store, score), warning=warning, data=data,
        thumb_px=thumb_px)
    stores.write_bytes_atomic(out / INDEX, page.encode("utf-8"))  # last: the report is complete
    return ShowResult(out=out, index=out / INDEX, pairs=int(a.size), shown=len(chosen),
                      images=int(image_ids.size), missing=missing, missing_files=unfiled,
                      views={k: len(v[0]) for k, v in views.items()},
                      mismatches=mismatches, labelled=labelled, selected=selected)


def report_title(path: Path, pairs: int, band: tuple[float, float]) -> str:
    """Names the store by its last two path parts (``demo/pairs``, not a bare ``pairs``)."""
    parts = path.resolve().parts
    name = "/".join(parts[-2:]) if len(parts) > 1 else str(path)
    return f"{name}: {pairs:,} pairs in [{band[0]:g}, {band[1]:g}]"


def _selection(emb: Embeddings, a: np.ndarray, b: np.ndarray, lab: Labels | None,
               only_class: str | None, only_key: str | None
               ) -> tuple[np.ndarray | None, str | None]:
    """Indices of the pairs that touch the class / the key (None: no filter), and the filter
    in words."""
    import numpy as np

    from pairmine.errors import InputError

    if only_class is None and only_key is None:
        return None, None
    keep = np.ones(a.shape, dtype=bool)
    words = []
    if only_class is not None:
        if lab is None:
            raise InputError(f"--class {only_class}: the store has no labels",
                             "pass --labels FILE, or filter by --key")
        names = {lab.name(int(c)): int(c) for c in np.unique(lab.codes[lab.codes >= 0])}
        code = names.get(only_class)
        if code is None and only_class.lstrip("-").isdigit() and int(only_class) in \
                names.values():
            code = int(only_class)
        if code is None:
            raise InputError(f"--class {only_class}: no such class",
                             f"choose one of {', '.join(sorted(names)[:20])}")
        keep &= (lab.codes[a] == code) | (lab.codes[b] == code)
        words.append(f"class {lab.name(code)}")
    if only_key is not None:
        keys = emb.meta.column("key").to_pylist()  # a quality tool on one store: O(N) is fine
        if only_key not in keys:
            raise InputError(f"--key {only_key}: no image with this key in {emb.path}",
                             "give a key as the store recorded it (the report shows them)")
        image = keys.index(only_key)
        keep &= (a == image) | (b == image)
        words.append(f"key {only_key}")
    return np.flatnonzero(keep), " and ".join(words)


def _prepare(out: Path, *, overwrite: bool) -> None:
    """A new or empty folder, or an earlier report replaced with ``overwrite``; never a
    folder that holds something else."""
    if out.exists() and not out.is_dir():
        raise StoreError(f"output {out} exists and is not a directory", "choose another path")
    if not out.exists():
        out.mkdir(parents=True)
        return
    if (out / INDEX).exists():
        if not overwrite:
            raise StoreError(f"{out} already holds a report", "pass --overwrite to replace it")
        (out / INDEX).unlink()
        if (out / THUMBS).is_dir():
            shutil.rmtree(out / THUMBS)
        return
    if (out / THUMBS).is_dir() and not any(p for p in out.iterdir() if p.name != THUMBS):
        shutil.rmtree(out / THUMBS)  # an interrupted earlier report: start over
        return
    if any(out.iterdir()):
        raise StoreError(f"output {out} is a non-empty directory that is not a report",
                         "choose an empty or new directory")


def _same_labels(a: np.ndarray, b: np.ndarray, lab: Labels | None) -> np.ndarray:
    """Per pair: 1 same label, 0 different, -1 unknown."""
    import numpy as np

    if lab is None:
        return np.full(a.shape, -1, dtype=np.int8)
    la, lb = lab.codes[a], lab.codes[b]
    out = np.where(la == lb, 1, 0).astype(np.int8)
    out[(la < 0) | (lb < 0)] = -1
    return out


def _views(score: np.ndarray, same: np.ndarray, per_view: int, seed: int,
           keep: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, str, str]]:
    """Pair indices of each view, in display order, with a title and a note; only the pairs
    ``keep`` (indices, ascending) when given."""
    import numpy as np

    pool = np.arange(score.size) if keep is None else keep
    n = pool.size
    desc = pool[np.lexsort((pool, -score[pool].astype(np.float64)))]  # ties: store order
    k = min(per_view, n)
    rng = np.random.default_rng(seed)
    views = {
        "top": (desc[:k], "Highest scores",
                f"The {k} highest-scoring pairs of {n}, best first."),
        "random": (pool[rng.choice(n, size=k, replace=False)] if n else desc[:0],
                   "Random sample",
                   f"{k} pairs drawn at random (seed {seed}): what the set looks like "
                   "on average."),
        "lowest": (desc[::-1][:k], "Lowest scores",
                   f"The {k} lowest-scoring pairs: the band's lower edge, where mistakes "
                   "start."),
    }
    wrong = desc[same[desc] == 0]
    if (same[pool] >= 0).any():
        m = min(per_view, wrong.size)
        views["mismatch"] = (wrong[:m], "Label mismatches",
                             f"{m} of the {wrong.size} pairs whose labels differ, highest "
                             "score first.")
    return views


def _thumbnails(emb: Embeddings, ids: np.ndarray, lab: Labels | None, folder: Path, *,
                thumb_px: int, inline: bool, progress: Progress | None,
                roots: ImageRoots) -> tuple[dict[str, dict[str, Any]], list[str], int]:
    """One thumbnail per image id; returns the page's image table, the keys not read and how
    many of those have no image file at all (rows imported without one)."""
    from pairmine import stores
    from pairmine.sources import read_ref, ref_reader

    kind = emb.manifest.get("source", {}).get("kind")
    if not kind:
        raise StoreError(f"the embeddings store {emb.path} does not record its source kind",
                         "re-run embed with this pairmine version")
    read = ref_reader(str(kind))
    places = [c for c in stores.PLACE_COLUMNS if c in emb.meta_columns]
    meta = emb.take(ids, ["key", "source", "member", *places]).to_pylist()  # shown rows only
    images: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    unfiled = 0
    if not inline:
        folder.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress.start("thumbnails", total=int(ids.size), unit="images")
    for i, row in zip(ids.tolist(), meta, strict=True):
        src: str | None
        try:
            source = row["source"]  # None: a row imported without an image file
            data, ext = read_ref(read, roots.apply(source) if source else source,
                                 row["member"], stores.row_place(row))
            data, ext = make_thumbnail(data, ext, thumb_px)
        except PairmineError as exc:
            log.warning("no thumbnail for %s: %s", row["key"], exc)
            missing.append(str(row["key"]))
            unfiled += not source
            src = None
        else:
            if inline:
                src = f"data:{WEB_FORMATS[ext]};base64,{base64.b64encode(data).decode('ascii')}"
            else:
                name = f"{i}.{ext}"
                (folder / name).write_bytes(data)
                src = f"{THUMBS}/{name}"
        label = None if lab is None or lab.codes[i] < 0 else lab.name(int(lab.codes[i]))
        images[str(i)] = {"key": row["key"], "label": label, "src": src}
        if progress is not None:
            progress.advance(1)
    if progress is not None:
        progress.finish()
    return images, missing, unfiled


def make_thumbnail(data: bytes, ext: str, px: int) -> tuple[bytes, str]:
    """Small web-format images pass through as their original bytes; others are decoded,
    shrunk to fit ``px`` and written as JPEG."""
    from PIL import Image

    from pairmine.images import ImageDecodeError, decode_rgb

    ext = ext.lower()
    try:
        img = decode_rgb(data, draft_size=px)
    except ImageDecodeError as exc:
        raise SourceError(f"cannot decode the image: {exc}") from None
    if ext in WEB_FORMATS and max(img.size) <= px:
        return data, ext
    img.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue(), "jpg"


# ---------------------------------------------------------------------------------------------
# the page


def render_page(*, title: str, subtitle: str, summary: str, histogram: str, warning: str,
                data: dict[str, Any], thumb_px: int) -> str:
    """The page around its parts: ``title`` and ``subtitle`` are plain text (escaped here),
    ``summary``, ``histogram`` and ``warning`` are markup their makers escaped, ``data`` goes
    into the inline JSON block."""
    parts = {"@@TITLE@@": html_text(title), "@@SUBTITLE@@": html_text(subtitle),
             "@@CSS@@": CSS.replace("@@THUMB@@", str(thumb_px)), "@@SUMMARY@@": summary,
             "@@HISTOGRAM@@": histogram, "@@WARNING@@": warning, "@@DATA@@": script_json(data),
             "@@JS@@": JS}
    # one pass over the template, so text inside a value is never taken for a placeholder
    return re.sub(r"@@[A-Z]+@@", lambda m: parts[m.group(0)], TEMPLATE)


def _summary(store: Pairs, emb: Embeddings, anchors: int, lab: Labels | None, labelled: int,
             mismatches: int | None, shown: int, missing: int, what: str | None = None,
             selected: int | None = None) -> str:
    counts = store.manifest.get("counts", {})
    n = int(store.table.num_rows)
    rows: list[tuple[str, str]] = [
        ("band", f"[{store.manifest['min']}, {store.manifest['max']}]"),
        ("pairs (unordered)", f"{n:,}"),
        ("pairs (ordered, Algorithm 1)", f"{int(counts.get('ordered', 2 * n)):,}"),
        ("images in the store", f"{len(emb):,}"),
        ("anchors (subset)", f"{anchors:,}"),
    ]
    if "anchors_with_pairs" in counts:
        rows.append(("anchors with a pair", f"{int(counts['anchors_with_pairs']):,}"))
    rows.append(("positives per anchor", f"{2 * n / max(anchors, 1):.3f}"))
    if "duplicates" in counts:
        rows.append(("identical images set aside", f"{int(counts['duplicates']):,}"))
    if lab is not None and mismatches is not None:
        acc = f"{(labelled - mismatches) / labelled:.2%}" if labelled else "n/a"
        rows += [("labels", lab.origin), ("labelled pairs", f"{labelled:,}"),
                 ("pair accuracy", acc), ("label mismatches", f"{mismatches:,}")]
    else:
        rows.append(("labels", "none (pass --labels FILE to mark mismatches)"))
    encoder = emb.manifest.get("config", {}).get("encoder")
    if encoder:
        rows.append(("encoder", str(encoder)))
    if what is not None and selected is not None:
        rows.append(("filter", f"{what}: {selected:,} pairs"))
    rows.append(("pairs in this report", f"{shown:,}"))
    if missing:
        rows.append(("images missing", f"{missing:,}"))
    body = "".join(f'<tr><th>{html_text(k)}</th><td data-key="{html_attr(k)}">'
                   f"{html_text(v)}</td></tr>" for k, v in rows)
    return f'<table class="summary" id="pm-summary">{body}</table>'


def class_table(per_class: list[ClassAccuracy]) -> str:
    """Per-class pair accuracy (eval-pairs' own numbers): ordered pairs by the anchor's class,
    the share of partners with the same label, next to the class's share p_c (chance). Each
    class name filters the pairs on the page."""
    if not per_class:
        return ""
    head = "".join(f"<th>{html_text(h)}</th>" for h in
                   ("class", "anchors", "share p_c", "ordered pairs", "accuracy"))
    rows = []
    for c in per_class:
        accuracy = "—" if c.accuracy is None else f"{c.accuracy:.1%}"
        rows.append(f'<tr><td><button type="button" class="pm-class" '
                    f'data-class="{html_attr(c.name)}">{html_text(c.name)}</button></td>'
                    f"<td>{c.anchors:,}</td><td>{c.share:.1%}</td><td>{c.ordered:,}</td>"
                    f"<td>{accuracy}</td></tr>")
    return (f'<table class="summary classes" id="pm-classes"><caption>per class (ordered '
            f"pairs by the anchor's label; click a class to filter)</caption>"
            f"<tr>{head}</tr>{''.join(rows)}</table>")


# a recorded histogram is used when it shows more than the band itself (--wide-histogram or
# --sweep); the band alone is binned from the store's own scores, finer than match's bins
HIST_BINS = 40


def histogram_svg(store: Pairs, score: np.ndarray, width: int = 560, height: int = 190) -> str:
    """The scores as inline SVG bars, the band shaded and its bounds drawn and labelled. The
    histogram match recorded, when it reaches beyond the band (``match --wide-histogram``:
    from min - 0.05 to 1.0); otherwise the store's own scores over the band, in 40 bins."""
    import numpy as np

    lo, hi = store.info.min, store.info.max
    record = store.manifest.get("histogram") or {}
    edges = np.asarray(record.get("edges", []), dtype=np.float64)
    counts = np.asarray(record.get("counts", []), dtype=np.float64)
    caption = "unordered pairs near the band, as match recorded them"
    wider = edges.size >= 2 and (edges[0] < lo - 1e-9 or edges[-1] > hi + 1e-9)
    if not wider or counts.size != edges.size - 1:
        span = max(hi - lo, 1e-6)
        edges = np.linspace(lo, lo + span, HIST_BINS + 1)
        counts = np.histogram(score.astype(np.float64), bins=edges)[0].astype(np.float64)
        caption = ("scores of the pairs in the store, over the band (pairmine match "
                   "--wide-histogram records the scores around it)")
    pad_l, pad_r, pad_t, pad_b = 48, 22, 24, 36
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    x0, x1 = float(edges[0]), float(edges[-1])
    top = max(float(counts.max(initial=0)), 1.0)

    def x(v: float) -> float:
        return pad_l + (min(max(v, x0), x1) - x0) / max(x1 - x0, 1e-12) * w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="pm-hist" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="histogram of scores">']
    parts.append(f'<rect x="{x(lo):.1f}" y="{pad_t}" width="{max(x(hi) - x(lo), 1):.1f}" '
                 f'height="{h}" fill="#1565c0" fill-opacity="0.10" class="band"/>')
    for left, right, c in zip(edges[:-1], edges[1:], counts, strict=True):
        if c <= 0:
            continue
        bh = c / top * h
        inside = left >= lo - 1e-12 and right <= hi + 1e-12
        parts.append(f'<rect class="bar" x="{x(left):.1f}" y="{pad_t + h - bh:.1f}" '
                     f'width="{max(x(right) - x(left) - 0.5, 0.5):.1f}" height="{bh:.1f}" '
                     f'fill="{"#1565c0" if inside else "#90a4ae"}">'
                     f"<title>[{left:.4f}, {right:.4f}): {int(c):,}</title></rect>")
    # labels sit above the bars (never hidden by one), inside the band's edges, so they
    # never run off the plot
    for v, name, anchor, dx in ((lo, "min", "start", 3), (hi, "max", "end", -3)):
        parts.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{pad_t}" y2="{pad_t + h}" '
                     f'stroke="#1565c0" stroke-width="1.5" stroke-dasharray="4 3" '
                     f'class="bound"/><text x="{x(v) + dx:.1f}" y="{pad_t - 6}" '
                     f'font-size="10" text-anchor="{anchor}" fill="#1565c0">{name} {v:g}</text>')
    axis_y = pad_t + h
    parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{axis_y}" y2="{axis_y}" '
                 f'stroke="#5f6b76"/>')
    ticks = [float(v) for v in np.linspace(x0, x1, 6)]
    ticks = [v for v in ticks if min(abs(v - lo), abs(v - hi)) > (x1 - x0) / 12] + [lo, hi]
    for v in sorted(set(ticks)):  # the band's bounds among the ticks, in the band's colour
        style = 'fill="#1565c0" font-weight="bold"' if v in (lo, hi) else 'fill="#5f6b76"'
        parts.append(f'<text x="{x(v):.1f}" y="{axis_y + 14}" font-size="10" '
                     f'text-anchor="middle" {style}>{v:.3f}</text>')
    parts.append(f'<text x="{pad_l - 6}" y="{pad_t + 8}" font-size="10" text-anchor="end" '
                 f'fill="#5f6b76">{int(top):,}</text><text x="{pad_l - 6}" y="{axis_y}" '
                 f'font-size="10" text-anchor="end" fill="#5f6b76">0</text>')
    parts.append(f'<text x="{pad_l + w / 2:.1f}" y="{height - 4}" font-size="11" '
                 f'text-anchor="middle" fill="#5f6b76">cosine score</text></svg>')
    return "".join(parts) + f"<figcaption>{html_text(caption)}</figcaption>"
