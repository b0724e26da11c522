"""``ImportConfig``: the options of ``pairmine import``, the one declaration the API, the CLI
options (``pairmine import --help``) and the validation come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pairmine.config import StageConfig, check_bool, check_choice, check_int, setting
from pairmine.errors import ConfigError

DTYPES = ("float16", "float32")
AUTO = "auto"


def layout_names() -> list[str]:
    """``auto`` and the registered layouts (read when first needed: ``--help`` imports none)."""
    from pairmine.ingest.layouts import LAYOUTS

    return [AUTO, *LAYOUTS.names()]


@dataclass(frozen=True, kw_only=True)
class ImportConfig(StageConfig):
    """The options of ``pairmine.import_embeddings``: which layout the source has, which of
    its columns hold the keys, embeddings, labels and image paths, and how the store is
    written."""

    layout: str = setting(
        AUTO, choices=layout_names,
        help="Layout of SOURCE: clip-retrieval (img_emb/img_emb_N.npy + metadata/"
             "metadata_N.parquet), parquet (files with an embedding column, NeMo Curator's "
             "id + embeddings), npy (one .npy matrix, keys from --keys); auto detects it.")
    normalize: bool = setting(
        False, help="L2-normalise the rows (in float32) instead of refusing rows that are "
                    "not unit vectors.")
    shard_size: int = setting(65536, minimum=1,
                              help="Rows per shard of the store (the unit of resume).")
    dtype: str = setting("float16", choices=DTYPES,
                         help="Storage type of the rows in the store.")
    key_column: str | None = setting(
        None, metavar="NAME",
        help="Column that names each row [default: clip-retrieval image_path, then key; "
             "parquet id, then key; npy: the keys file's key column or its only column; "
             "without one: FILE:ROW].")
    embedding_column: str | None = setting(
        None, metavar="NAME",
        help="Parquet layout: the list column of the vectors [default: embeddings, then "
             "embedding].")
    label_column: str | None = setting(
        None, metavar="NAME",
        help="Integer column of class labels [default: label, when there is one].")
    image_column: str | None = setting(
        None, metavar="NAME",
        help="Column of image file paths, read so that export and show find the images "
             "[default: image_path, when there is one]; values without an image extension "
             "(WebDataset keys, URLs) give rows without an image.")
    # setting() declares the field; its default (None) is immutable
    image_root: str | Path | None = setting(  # noqa: RUF009
        None, kind="path", metavar="DIR",
        help="Folder that relative image paths are relative to [default: the current "
             "directory].")
    images: bool = setting(
        True, negate="--no-images",
        help="Ignore image paths (faster: no image file is read); export then has no "
             "image to write.")
    keys: str | Path | None = setting(  # noqa: RUF009
        None, kind="path", metavar="FILE",
        help="npy layout: the keys, row-aligned with the matrix: .txt (one a line), or "
             ".csv/.parquet with a key column (--key-column).")

    def __post_init__(self) -> None:
        super().__post_init__()
        # checked before anything touches OUT: a bad option writes nothing
        check_choice("--layout", self.layout, layout_names())
        check_bool("--normalize", self.normalize)
        check_bool("--no-images", self.images)
        check_int("--shard-size", self.shard_size, minimum=1)
        check_choice("--dtype", self.dtype, DTYPES)
        for flag, value in (("--key-column", self.key_column),
                            ("--embedding-column", self.embedding_column),
                            ("--label-column", self.label_column),
                            ("--image-column", self.image_column)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{flag} {value!r} is not a column name")
        if self.image_root is not None and not Path(self.image_root).is_dir():
            raise ConfigError(f"--image-root {self.image_root} is not an existing folder",
                              "give the folder the relative image paths start from")
        if self.keys is not None and not Path(self.keys).is_file():
            raise ConfigError(f"--keys {self.keys} is not a file",
                              "give a .txt (one key a line), .csv or .parquet file")
