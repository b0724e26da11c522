"""``cifar`` and ``stl10``: the standard on-disk array formats of CIFAR-10/100 and STL-10.

The images are raw pixel arrays, not files, so ``read(i)`` encodes image ``i`` as a lossless
PNG (fixed compression level, no metadata chunks: the same pixels always give the same
bytes). Arrays load lazily, once per process, and never travel in the pickled state:
DataLoader workers load (CIFAR) or memory-map (STL-10) them on their first read.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
from bisect import bisect_right
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.errors import SourceError
from pairmine.sources.base import (
    ImageSource,
    RefReader,
    SourceKind,
    no_images,
    refs_table,
    register_source,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

# Fixed, and 0: the pixels are stored uncompressed inside the zlib stream, so no compressor
# heuristics (which differ between zlib builds) reach the bytes or their sha256, and encoding
# and decoding are as cheap as PNG gets. Tiny images barely compress anyway.
PNG_COMPRESS_LEVEL = 0
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_FILE = re.compile(r"^(data_batch_\d+|test_batch|train|test)$")
STL_SIDE = 96
STL_BYTES = 3 * STL_SIDE * STL_SIDE


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → PNG bytes that depend only on the pixels (and the zlib build)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# CIFAR: python pickles of {b'data': uint8 (n, 3072), b'labels' | b'fine_labels': [int]}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, numpy arrays): a file that tries
    to call anything else is refused instead of run."""

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol 2 pickles bytes written by Python 3
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: str) -> dict[Any, Any]:
    try:
        with open(path, "rb") as f:
            # encoding='bytes': the batches were pickled by Python 2, their str keys are bytes
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise SourceError(f"CIFAR batch {path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, OSError) as exc:
        raise SourceError(f"{path} is not a CIFAR python batch: {exc}",
                          "give the folder cifar-10-batches-py or cifar-100-python "
                          "(the 'python version' download)") from None
    if not isinstance(obj, dict):
        raise SourceError(f"{path} is not a CIFAR python batch (it holds a "
                          f"{type(obj).__name__}, not a dict)")
    return obj


def _field(batch: dict[Any, Any], name: str) -> Any:
    return batch.get(name.encode(), batch.get(name))


def _load_cifar(path: str) -> tuple[np.ndarray, list[int] | None]:
    """(data (n, 3072) uint8, labels or None) of one batch file, checked."""
    import numpy as np

    batch = _unpickle(path)
    data = _field(batch, "data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise SourceError(f"{path} is not a CIFAR batch: its data is {got}, "
                          f"not uint8 (n, 3072)")
    raw = _field(batch, "labels")
    if raw is None:
        raw = _field(batch, "fine_labels")
    labels = None
    if raw is not None:
        labels = [int(v) for v in raw]
        if len(labels) != len(data):
            raise SourceError(f"{path} holds {len(data)} images but {len(labels)} labels")
    return data, labels


def _cifar_pixels(data: np.ndarray, row: int) -> np.ndarray:
    # a row is 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32
    pixels: np.ndarray = data[row].reshape(3, 32, 32).transpose(1, 2, 0)
    return pixels


def _cifar_names(folder: str) -> list[str] | None:
    for meta, name in (("batches.meta", "label_names"), ("meta", "fine_label_names")):
        path = os.path.join(folder, meta)
        if os.path.isfile(path):
            try:
                names = _field(_unpickle(path), name)
                return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            except (SourceError, TypeError, UnicodeDecodeError) as exc:
                log.warning("ignoring class names in %s: %s", path, exc)
    return None


# ---------------------------------------------------------------------------------------------
# STL-10: uint8 images (3, 96, 96) stored column-major, labels 1..10 in a separate file


def _stl_pixels(images: np.ndarray, row: int) -> np.ndarray:
    # column-major storage: axis 1 is the column (x), axis 2 the row (y)
    pixels: np.ndarray = images[row].transpose(2, 1, 0)
    return pixels


def _stl_count(path: str) -> int:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise SourceError(f"STL-10 file {path} does not exist") from None
    if size % STL_BYTES:
        raise SourceError(f"{path} is not an STL-10 image file: {size} bytes is not a "
                          f"multiple of 3x96x96")
    return size // STL_BYTES


def _stl_map(path: str) -> np.ndarray:
    import numpy as np

    n = _stl_count(path)
    images: np.ndarray = np.memmap(path, dtype=np.uint8, mode="r",
                                   shape=(n, 3, STL_SIDE, STL_SIDE))
    return images


def _stl_labels(path: str, n: int) -> list[int]:
    import numpy as np

    y = np.fromfile(path, dtype=np.uint8)
    if len(y) != n:
        raise SourceError(f"{path} holds {len(y)} labels for {n} images")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise SourceError(f"{path} holds labels outside 1..10: not an STL-10 label file")
    labels: list[int] = (y.astype(np.int64) - 1).tolist()  # the file counts classes from 1
    return labels


def _stl_names(folder: str) -> list[str] | None:
    path = os.path.join(folder, "class_names.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------


class ArraySource(ImageSource):
    """Images held as rows of pixel arrays in one or more files."""

    def __init__(self, spec: str, files: list[str], counts: list[int],
                 labels: list[int | None] | None, names: list[str] | None) -> None:
        self.spec = spec
        self.files = files
        self.counts = counts
        self._starts = [sum(counts[:i]) for i in range(len(counts))]  # first row of each file
        self._total = sum(counts)
        if not self._total:
            raise no_images(spec)
        self._labels = labels
        self.labels = labels is not None
        self._names = names
        self._arrays: dict[int, np.ndarray] = {}  # per process, loaded on first read
        self._refs: pa.Table | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_arrays={}, _refs=None)  # arrays are loaded again where they are read
        return state

    def __len__(self) -> int:
        return self._total

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self._total:
            raise IndexError(f"image {index} of a source of {self._total}")
        f = bisect_right(self._starts, index) - 1
        return f, index - self._starts[f]

    def _array(self, f: int) -> np.ndarray:
        arr = self._arrays.get(f)
        if arr is None:
            arr = self._arrays[f] = self._load(self.files[f])
        return arr

    def _load(self, path: str) -> np.ndarray:
        raise NotImplementedError

    def _pixels(self, arr: np.ndarray, row: int) -> np.ndarray:
        raise NotImplementedError

    def pixels(self, index: int) -> np.ndarray:
        """Image ``index`` as (H, W, 3) uint8, without the PNG round trip."""
        f, row = self._locate(index)
        return self._pixels(self._array(f), row)

    def container_files(self) -> list[str]:
        return list(self.files)

    def read(self, index: int) -> bytes:
        import numpy as np

        return encode_png(np.ascontiguousarray(self.pixels(index)))

    def refs(self) -> pa.Table:
        if self._refs is None:
            keys: list[str] = []
            sources: list[str] = []
            members: list[str] = []
            for path, n in zip(self.files, self.counts, strict=True):
                stem = Path(path).name.removesuffix(".bin")
                keys.extend(f"{stem}/{i:05d}" for i in range(n))
                sources.extend([path] * n)
                members.extend(str(i) for i in range(n))
            self._refs = refs_table(keys, sources, members, self._labels)
        return self._refs

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": list(self.files), "counts": list(self.counts),
                "images": self._total, "ignored": self.ignored(), "labels": self.labels,
                "labelled": (sum(v is not None for v in self._labels)
                             if self._labels is not None else 0),
                "encoding": "png", "png_compress_level": PNG_COMPRESS_LEVEL}

    def class_names(self) -> list[str] | None:
        return list(self._names) if self.labels and self._names else None


class CifarSource(ArraySource):
    kind = "cifar"

    def __init__(self, spec: str, *, labels: bool = True) -> None:
        path = os.path.abspath(spec)
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "data_batch_1")):
                names = CIFAR10_TRAIN
            elif os.path.isfile(os.path.join(path, "train")):
                names = ["train"]
            else:
                raise SourceError(f"{path} is not a CIFAR folder (no data_batch_1, no train)",
                                  "give cifar-10-batches-py, cifar-100-python or one batch file")
            files = [os.path.join(path, n) for n in names]
            missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
            if missing:
                raise SourceError(f"CIFAR-10 folder {path} lacks {', '.join(missing)}",
                                  "restore the full training set, or give one batch file")
            folder = path
        else:
            files, folder = [path], os.path.dirname(path)
        counts: list[int] = []
        all_labels: list[int | None] = []
        self.variant = "cifar-100" if os.path.basename(files[0]) in ("train", "test") \
            else "cifar-10"
        for f in files:
            data, batch_labels = _load_cifar(f)  # checked here, loaded again where read
            counts.append(len(data))
            all_labels.extend(batch_labels if batch_labels is not None else [None] * len(data))
            del data
        super().__init__(spec, files, counts, all_labels if labels else None,
                         _cifar_names(folder))
        log.info("%s %s: %d images in %d files", self.variant, path, self._total, len(files))

    def _load(self, path: str) -> np.ndarray:
        return _load_cifar(path)[0]

    def _pixels(self, arr: np.ndarray, row: int) -> np.ndarray:
        return _cifar_pixels(arr, row)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "variant": self.variant, "image_size": [32, 32]}


class Stl10Source(ArraySource):
    kind = "stl10"

    def __init__(self, spec: str, *, labels: bool = True) -> None:
        path = os.path.abspath(spec)
        if os.path.isdir(path):
            pairs = [(os.path.join(path, x), os.path.join(path, y) if y else None)
                     for x, y in (("train_X.bin", "train_y.bin"), ("unlabeled_X.bin", None))]
            pairs = [(x, y) for x, y in pairs if os.path.isfile(x)]
            if not pairs:
                raise SourceError(f"{path} is not an STL-10 folder "
                                  f"(no train_X.bin, no unlabeled_X.bin)",
                                  "give stl10_binary or one *_X.bin file")
            folder = path
        else:
            y = path[: -len("_X.bin")] + "_y.bin" if path.endswith("_X.bin") else None
            pairs, folder = [(path, y)], os.path.dirname(path)
        files, counts = [x for x, _ in pairs], [_stl_count(x) for x, _ in pairs]
        all_labels: list[int | None] = []
        for (_, y), n in zip(pairs, counts, strict=True):
            if y is not None and os.path.isfile(y):
                all_labels.extend(_stl_labels(y, n))
            else:
                all_labels.extend([None] * n)
        super().__init__(spec, files, counts, all_labels if labels else None,
                         _stl_names(folder))
        log.info("stl10 %s: %d images in %d files", path, self._total, len(files))

    def _load(self, path: str) -> np.ndarray:
        return _stl_map(path)

    def _pixels(self, arr: np.ndarray, row: int) -> np.ndarray:
        return _stl_pixels(arr, row)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_size": [STL_SIDE, STL_SIDE]}


def _detect_cifar(spec: str) -> bool:
    p = Path(spec)
    if p.is_dir():
        return (p / "data_batch_1").is_file() or ((p / "train").is_file()
                                                  and (p / "meta").is_file())
    if not (p.is_file() and _CIFAR_FILE.match(p.name)):
        return False
    with open(p, "rb") as f:
        return f.read(1) == b"\x80"  # a binary pickle, not some other file called 'train'


def _detect_stl(spec: str) -> bool:
    p = Path(spec)
    if p.is_dir():
        return (p / "train_X.bin").is_file() or (p / "unlabeled_X.bin").is_file()
    return p.is_file() and p.name.endswith("_X.bin")


def _array_reader(load: Any, pixels: Any) -> RefReader:
    arrays: dict[str, np.ndarray] = {}

    def read(source: str, member: str | None, /, *,
             place: tuple[int, int] | None = None) -> tuple[bytes, str]:
        import numpy as np

        arr = arrays.get(source)
        if arr is None:
            if not os.path.isfile(source):
                raise SourceError(f"array file {source} no longer exists",
                                  "was the source moved or deleted after embedding?")
            arr = arrays[source] = load(source)
        try:
            row = int(member) if member is not None else -1
        except ValueError:
            row = -1
        if not 0 <= row < len(arr):
            raise SourceError(f"{source} has no image {member!r} (it holds {len(arr)})")
        return encode_png(np.ascontiguousarray(pixels(arr, row))), "png"

    return read


register_source(SourceKind(
    name="cifar",
    detect=_detect_cifar,
    open=lambda spec, labels: CifarSource(spec, labels=labels),
    help="CIFAR-10/100 python batches: cifar-10-batches-py, cifar-100-python, or one batch",
    ref_reader=lambda: _array_reader(lambda p: _load_cifar(p)[0], _cifar_pixels),
))
register_source(SourceKind(
    name="stl10",
    detect=_detect_stl,
    open=lambda spec, labels: Stl10Source(spec, labels=labels),
    help="STL-10 binary: stl10_binary (train then unlabeled) or one *_X.bin file",
    ref_reader=lambda: _array_reader(_stl_map, _stl_pixels),
))
