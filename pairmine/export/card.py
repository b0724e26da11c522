"""The export's dataset card: ``README.md`` at the export root, with the Hugging Face YAML header
that makes the export a dataset others load and publish as it is.

``datasets.load_dataset(OUT)`` reads the header: ``configs`` (which files each configuration
holds: ``pairs``, and ``combined`` for a combined export) and ``dataset_info`` (the
``features`` of each: every image member, the ``json`` record, ``__key__``, ``__url__``).
Declared features matter: without them ``datasets`` infers the columns from the first five
samples, and an export whose members differ from sample to sample (``anchor.jpg`` beside
``anchor.png``: sources of mixed formats; ``image.*`` beside ``anchor.*``: a combined export)
silently loses the members it did not see first. Member names keep the original extension:
WebDataset's decoders, Ray Data and DALI choose the decoder by it, and the bytes are the
original ones.

The header's ``pairmine`` record holds the counts and the provenance (encoder spec and
checkpoint hash, band, subset and seed, how a curated store was made, pair accuracy when labels
were known); ``pairmine verify`` checks the card against the data (:func:`check_card`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine import stores
from pairmine.errors import StoreError
from pairmine.stores.export import (
    IMAGES_FILE,
    KIND_IMAGE,
    KIND_PAIR,
    SPPS_FILE,
    ExportManifest,
    ExportShard,
    read_shard_index,
)

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
CARD_KEY = "card"  # the manifest's record of the card (``ExportManifest.extra``)
DEFAULT_LICENSE = "other"
CONFIG_PAIRS = "pairs"
CONFIG_COMBINED = "combined"
CONFIG_IMAGES = "images"  # parquet exports: images.parquet
SPLIT = "train"
KEY_COLUMNS = ("__key__", "__url__")  # what the webdataset builder adds to every row

# the ``json`` member of each sample kind (docs/export.md): field -> Hugging Face dtype
PAIR_JSON = {"a": "int64", "b": "int64", "key_a": "string", "key_b": "string",
             "kind": "string", "label_a": "int64", "label_b": "int64", "pair_id": "int64",
             "score": "float64"}
IMAGE_JSON = {"id": "int64", "key": "string", "kind": "string", "label": "int64"}
_ARROW_DTYPES = {"int64": "int64", "int32": "int32", "float": "float32", "double": "float64",
                 "string": "string", "large_string": "string", "bool": "bool"}


@dataclass(frozen=True)
class CardLayout:
    """What the card declares: each configuration's data files and features."""

    configs: dict[str, list[str]]  # config name -> data files (relative to the export)
    features: dict[str, list[dict[str, Any]]]  # config name -> Hugging Face feature list
    default: str

    def to_json(self) -> dict[str, Any]:
        return {"configs": self.configs, "default": self.default}


# ---------------------------------------------------------------------------------------------
# what the card declares, from the export's own files


def card_layout(out: Path, info: ExportManifest) -> CardLayout:
    """The configurations of the export at ``out`` and their features, from its shard
    indexes (shard exports) or its tables (parquet exports)."""
    if not info.shards:
        return _table_layout(out, info)
    if info.pairs_view:  # a combined export: its pairs alone, then the merged set
        view = _series_members(out, info.pairs_view)
        merged = _series_members(out, info.shards)
        return CardLayout(
            configs={CONFIG_PAIRS: [s.tar for s in info.pairs_view],
                     CONFIG_COMBINED: [s.tar for s in info.shards]},
            features={CONFIG_PAIRS: _shard_features(view, PAIR_JSON),
                      CONFIG_COMBINED: _shard_features(merged, {**PAIR_JSON, **IMAGE_JSON})},
            default=CONFIG_PAIRS)
    # an export without a pairs view: pairs only, or combined by an older pairmine
    pair_only: list[str] = []
    every: list[str] = []
    pair_members: set[str] = set()
    all_members: set[str] = set()
    has_images = False
    for number, shard in enumerate(info.shards):
        index = read_shard_index(out, number, shard).select(["kind", "name_a", "name_b"])
        kinds = set(index.column("kind").to_pylist())
        names = {n for col in ("name_a", "name_b") for n in index.column(col).to_pylist() if n}
        every.append(shard.tar)
        all_members |= names
        has_images |= KIND_IMAGE in kinds
        if kinds <= {KIND_PAIR}:
            pair_only.append(shard.tar)
            pair_members |= names
    configs: dict[str, list[str]] = {}
    features: dict[str, list[dict[str, Any]]] = {}
    pairs_apart = info.counts.pairs == sum(s.pairs for s in info.shards if s.tar in pair_only)
    if pairs_apart:  # every pair lies in a shard of pairs only: the pairs load on their own
        configs[CONFIG_PAIRS] = pair_only
        features[CONFIG_PAIRS] = _shard_features(pair_members, PAIR_JSON)
    if has_images or not pairs_apart:
        configs[CONFIG_COMBINED] = every
        features[CONFIG_COMBINED] = _shard_features(all_members, {**PAIR_JSON, **IMAGE_JSON})
    return CardLayout(configs=configs, features=features,
                      default=CONFIG_PAIRS if pairs_apart else CONFIG_COMBINED)


def _series_members(out: Path, shards: Sequence[ExportShard]) -> set[str]:
    """Every member name (``anchor.jpg``, ``image.png``, ...) a series of shards holds."""
    names: set[str] = set()
    for number, shard in enumerate(shards):
        index = read_shard_index(out, number, shard).select(["name_a", "name_b"])
        names |= {n for col in ("name_a", "name_b") for n in index.column(col).to_pylist() if n}
    return names


def _shard_features(members: set[str], json_fields: dict[str, str]) -> list[dict[str, Any]]:
    """Every image member as an image, the json record as a struct of every field a sample
    kind has (absent ones load as null), the key and url columns."""
    features: list[dict[str, Any]] = [{"name": m, "dtype": "image"} for m in sorted(members)]
    features.append({"name": "json", "struct": [{"name": k, "dtype": json_fields[k]}
                                                for k in sorted(json_fields)]})
    features += [{"name": c, "dtype": "string"} for c in KEY_COLUMNS]
    return features


def _table_layout(out: Path, info: ExportManifest) -> CardLayout:
    """A parquet export: its tables, which point at the original files (no image bytes)."""
    import pyarrow.parquet as pq

    configs = {CONFIG_PAIRS: [SPPS_FILE]}
    features = {CONFIG_PAIRS: _table_features(pq.read_schema(out / SPPS_FILE))}
    if IMAGES_FILE in info.files:
        configs[CONFIG_IMAGES] = [IMAGES_FILE]
        features[CONFIG_IMAGES] = _table_features(pq.read_schema(out / IMAGES_FILE))
    return CardLayout(configs=configs, features=features, default=CONFIG_PAIRS)


def _table_features(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "dtype": _ARROW_DTYPES.get(str(f.type), str(f.type))}
            for f in schema]


# ---------------------------------------------------------------------------------------------
# provenance


def provenance(out: Path, info: ExportManifest) -> dict[str, Any]:
    """Where the data comes from: the encoder (spec, checkpoint sha256), the band, subset and
    seed of the pairs, how a curated store was made, pair accuracy when labels are known."""
    emb = _manifest_of(Path(info.inputs.embeddings.path))
    pairs = _manifest_of(Path(info.inputs.pairs.path))
    encoder = emb.get("encoder") or {}
    spec = encoder.get("spec") or (emb.get("config") or {}).get("encoder")
    record: dict[str, Any] = {
        "pairmine_version": info.pairmine_version,
        "export_format_version": info.version,
        "encoder": {"spec": spec, "arch": encoder.get("arch"),
                    "features": encoder.get("features"),
                    "checkpoint_sha256": _checkpoint_sha256(spec)},
        "source": {"kind": info.source.get("kind"), "spec": info.source.get("spec")},
        "band": [pairs.get("min"), pairs.get("max")] if pairs else None,
        "subset": pairs.get("subset"),
        "seed": (pairs.get("subset") or {}).get("seed"),
        "curation": pairs.get("curation"),
        "export": info.config.to_json(),
        "counts": {"pairs": info.counts.pairs, "images": info.counts.images,
                   "samples": info.counts.samples, "shards": len(info.shards),
                   "skipped_pairs": info.counts.skipped_pairs,
                   "skipped_images": info.counts.skipped_images},
        "pair_accuracy": _pair_accuracy(out),
        "class_names": None if info.class_names is None else list(info.class_names),
    }
    return record


def _manifest_of(store: Path) -> dict[str, Any]:
    """An input store's manifest, or {} when it is gone (the card says what is known)."""
    if not (store / stores.MANIFEST).is_file():
        return {}
    try:
        return stores.read_json(store / stores.MANIFEST)
    except StoreError:
        return {}


def _checkpoint_sha256(spec: Any) -> str | None:
    """The sha256 of the encoder's checkpoint when the spec names a local file
    (``kind:/path/to/file``); None for built-in or hub weights."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    path = Path(spec.split(":", 1)[1])
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pair_accuracy(out: Path) -> dict[str, Any] | None:
    """Share of the exported pairs whose two images have the same label, over the pairs
    labelled at both ends (None when no pair is)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    labelled = same = 0
    for batch in pq.ParquetFile(out / SPPS_FILE).iter_batches(columns=["label_a", "label_b"]):
        a, b = batch.column(0), batch.column(1)
        both = pc.and_(pc.is_valid(a), pc.is_valid(b))
        labelled += int(pc.sum(both).as_py() or 0)
        same += int(pc.sum(pc.fill_null(pc.equal(a, b), False)).as_py() or 0)
    if labelled == 0:
        return None
    return {"accuracy": same / labelled, "labelled_pairs": labelled, "same_label": same}


# ---------------------------------------------------------------------------------------------
# the card


def write_card(out: Path, info: ExportManifest, *,
               license: str = DEFAULT_LICENSE) -> dict[str, Any]:
    """Write ``out/README.md`` for the export whose manifest is ``info``; returns the card's
    record for the manifest (``CARD_KEY``)."""
    layout = card_layout(out, info)
    facts = provenance(out, info)
    header = _header(layout, facts, license)
    text = "---\n" + _dump_yaml(header) + "---\n\n" + _body(layout, facts, license)
    stores.write_bytes_atomic(out / CARD_FILE, text.encode("utf-8"))
    log.info("dataset card written: %s", out / CARD_FILE)
    return {"file": CARD_FILE, "license": license, **layout.to_json()}


def _header(layout: CardLayout, facts: dict[str, Any], license: str) -> dict[str, Any]:
    header: dict[str, Any] = {"license": license}
    if license == DEFAULT_LICENSE:
        # the Hub asks a name for "other": the images' own terms decide (the card's note)
        header["license_name"] = "source-images-license"
    header["pretty_name"] = "Semantic positive pairs (pairmine export)"
    header["task_categories"] = ["image-feature-extraction"]
    header["tags"] = ["self-supervised-learning", "semantic-positive-pairs", "webdataset",
                      "pairmine"]
    header["configs"] = [
        {"config_name": name, **({"default": True} if name == layout.default else {}),
         "data_files": [{"split": SPLIT, "path": files}]}
        for name, files in layout.configs.items()]
    header["dataset_info"] = [{"config_name": name, "features": layout.features[name]}
                              for name in layout.configs]
    header["pairmine"] = facts
    return header


def _dump_yaml(obj: dict[str, Any]) -> str:
    import yaml  # type: ignore[import-untyped]  # PyYAML (a dependency of webdataset)

    return str(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=100))


def _body(layout: CardLayout, facts: dict[str, Any], license: str) -> str:
    counts = facts["counts"]
    enc = facts["encoder"]
    acc = facts["pair_accuracy"]
    lines = [
        "# Semantic positive pairs",
        "",
        "Pairs of images with the same semantic content, mined with pairmine (the Semantic "
        "Sampler of SePP-ID: Alkhalefi, Leontidis, Zhong, \"Semantic Positive Pairs for "
        "Enhancing Visual Representation Learning of Instance Discrimination Methods\") for "
        "self-supervised learning: each pair is a positive pair, next to the two augmented "
        "views of one image that instance discrimination uses.",
        "",
        f"- pairs: {counts['pairs']:,}; single images: {counts['images']:,}; "
        f"samples: {counts['samples']:,} in {counts['shards']} shard(s)",
        f"- encoder: `{enc['spec']}` (checkpoint sha256 "
        f"`{enc['checkpoint_sha256'] or 'n/a: not a local file'}`)",
        f"- band: {facts['band']}; subset: {facts['subset']}",
    ]
    if facts.get("curation"):
        cur = facts["curation"]
        lines.append(f"- curated with labels: method `{cur.get('method')}`, seed "
                     f"{cur.get('seed')}, pairs per class {cur.get('pairs_per_class')}")
    lines.append("- pair accuracy (same label at both ends): " + (
        f"{acc['accuracy']:.2%} of {acc['labelled_pairs']:,} labelled pairs" if acc
        else "unknown (no labels)"))
    lines += [
        f"- pairmine {facts['pairmine_version']}, export format version "
        f"{facts['export_format_version']}",
        "",
        "## Loading",
        "",
        "```python",
        "import datasets",
        f"{'merged' if layout.default == CONFIG_COMBINED else 'pairs'} = "
        f"datasets.load_dataset(\"path/to/this/folder\", split=\"{SPLIT}\")"
        f"  # config {layout.default!r}",
    ]
    if layout.default == CONFIG_COMBINED:  # pairs and images share the shards
        lines.append("pairs = merged.filter(lambda row: row[\"json\"][\"kind\"] == \"pair\")")
    if CONFIG_COMBINED in layout.configs and layout.default != CONFIG_COMBINED:
        lines.append(f"merged = datasets.load_dataset(\"path/to/this/folder\", "
                     f"\"{CONFIG_COMBINED}\", split=\"{SPLIT}\")")
    lines += [
        "```",
        "",
        "Configurations: " + "; ".join(
            f"`{name}`: {len(files)} file(s)" for name, files in layout.configs.items()) + ".",
        "Image members keep their original encoding and extension (`anchor.jpg`, "
        "`positive.png`, `image.jpg`): every member name the export holds is declared as a "
        "feature, so a row has its images under the names its source format gives (the "
        "others are null). `json` describes the sample (`kind` is `pair` or `image`).",
        "The shards are WebDataset tars: `webdataset`, `pairmine.datasets.SPPSDataset`, Ray "
        "Data and DALI read them as well; `spps.parquet` lists every pair.",
        "",
        "## License",
        "",
        f"`{license}`." + (" The images keep the license of the dataset they come from: "
                           "re-export with `--license` naming it before publishing."
                           if license == DEFAULT_LICENSE else ""),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# verify


def read_card_header(path: Path) -> dict[str, Any]:
    """The YAML header of a dataset card (ValueError when there is none)."""
    import yaml

    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n") or "\n---\n" not in text[3:]:
        raise ValueError("no YAML header between --- lines")
    header = yaml.safe_load(text[4:text.index("\n---\n", 3)])
    if not isinstance(header, dict):
        raise ValueError("the YAML header is not a mapping")
    return header


def check_card(out: Path, info: ExportManifest, problems: list[str]) -> None:
    """The card of the export at ``out`` against its data: the card is there when the
    manifest records one; its configurations name exactly the files that hold their samples,
    which exist; its features name every member; its counts are the manifest's."""
    record = info.extra.get(CARD_KEY)
    path = out / CARD_FILE
    if record is None:
        return  # an export written before cards existed
    if not path.is_file():
        problems.append(f"{CARD_FILE} (the dataset card) is missing")
        return
    try:
        header = read_card_header(path)
    except (ValueError, OSError) as exc:
        problems.append(f"{CARD_FILE}: {exc}")
        return
    except Exception as exc:  # a YAML syntax error, whatever its class (yaml.YAMLError)
        problems.append(f"{CARD_FILE}: the YAML header does not parse ({str(exc)[:80]})")
        return
    want = card_layout(out, info)
    configs = {c.get("config_name"): c for c in header.get("configs") or []
               if isinstance(c, dict)}
    if set(configs) != set(want.configs):
        problems.append(f"{CARD_FILE} declares configs {sorted(map(str, configs))}, the data "
                        f"has {sorted(want.configs)}")
        return
    infos = {c.get("config_name"): c for c in header.get("dataset_info") or []
             if isinstance(c, dict)}
    for name, files in want.configs.items():
        declared = [p for entry in configs[name].get("data_files") or []
                    for p in _paths(entry.get("path"))]
        missing = [p for p in declared if not (out / p).is_file()]
        if missing:
            problems.append(f"{CARD_FILE}: config {name!r} names missing files: "
                            f"{', '.join(missing[:3])}")
        elif sorted(declared) != sorted(files):
            problems.append(f"{CARD_FILE}: config {name!r} lists {len(declared)} file(s), "
                            f"the samples of {name!r} are in {len(files)}")
        features = (infos.get(name) or {}).get("features")
        if features != want.features[name]:
            names = {f.get("name") for f in features or [] if isinstance(f, dict)}
            lacking = sorted({str(f["name"]) for f in want.features[name]} - names)
            problems.append(f"{CARD_FILE}: the features of config {name!r} do not declare "
                            "the export's members" + (f" (missing: {', '.join(lacking)})"
                                                      if lacking else ""))
    counts = ((header.get("pairmine") or {}).get("counts") or {})
    for key in ("pairs", "images", "samples"):
        if counts.get(key) != getattr(info.counts, key):
            problems.append(f"{CARD_FILE} counts {counts.get(key)} {key}, the manifest "
                            f"{getattr(info.counts, key)}")
    if "license" not in header:
        problems.append(f"{CARD_FILE} declares no license")


def _paths(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []
