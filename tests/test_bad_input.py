"""Every failure a clear error (issue 12 §3): a table drives every command through outputs that
cannot be written (a read-only mount, an immutable directory, a full disk), damaged input
stores, out-of-range seeds and click's own validation errors. Each case must end with exactly
one line on stderr, no traceback, the documented exit code (1 for pairmine's errors about
inputs and outputs, 2 for a command line that cannot be used: unparseable, or a value out of
range) and nothing in OUT that looks complete.

The world (images, a random-weight ResNet-20 checkpoint, the three stores) is built by
:func:`build_world`, which ``tests/test_one_writer.py``, ``tests/test_crash_resume.py`` and
``benchmarks/reliability.py`` share.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image

REPO = Path(__file__).resolve().parents[1]
# the band of every match in these tests: wide, so a 30-image store has pairs in it
BAND = ("--min", "0.5", "--max", "0.999")


# ---------------------------------------------------------------------------------------------
# the world: a source folder, a checkpoint as its authors save it, the three stores


@dataclass
class World:
    root: Path
    images: Path
    checkpoint: Path
    emb: Path
    pairs: Path
    export: Path
    spec: str = field(init=False)

    def __post_init__(self) -> None:
        self.spec = f"cifar-resnet:{self.checkpoint}"


def make_images(root: Path, n: int = 30) -> Path:
    """``n`` random images over three class folders, every third one a PNG."""
    for i in range(n):
        fmt, ext = ("PNG", "png") if i % 3 == 0 else ("JPEG", "jpg")
        write_image(root / ("cat", "dog", "emu")[i % 3] / f"{i:03d}.{ext}", seed=7 + i,
                    size=(32 + i % 5, 32), fmt=fmt)
    return root


def make_checkpoint(path: Path, seed: int = 3) -> Path:
    """A ResNet-20 with seeded random weights, saved as akamaster/pytorch_resnet_cifar10 saves
    it (legacy pickle, DataParallel's ``module.`` prefix, no ``num_batches_tracked``)."""
    import torch

    from pairmine.encoders.he_resnet import CifarResNet

    torch.manual_seed(seed)
    model = CifarResNet(20, logits=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None \
                    and m.running_var is not None:
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = OrderedDict((f"module.{k}", v) for k, v in model.state_dict().items()
                        if not k.endswith("num_batches_tracked"))
    torch.save({"best_prec1": 10.0, "state_dict": state}, path,
               _use_new_zipfile_serialization=False)
    return path


def build_world(root: Path, n: int = 30) -> World:
    """Images, checkpoint and stores, made through the CLI as a user makes them."""
    root.mkdir(parents=True, exist_ok=True)
    images = make_images(root / "images", n)
    ckpt = make_checkpoint(root / "resnet20.th")
    w = World(root=root, images=images, checkpoint=ckpt, emb=root / "emb",
              pairs=root / "pairs", export=root / "spps")
    # fp32: `--precision auto` may time bf16 against fp32 per run, and these stores are
    # compared byte for byte with reruns
    for argv in (["embed", str(images), str(w.emb), "--encoder", w.spec, "--workers", "0",
                  "--shard-size", "8", "--device", "cpu", "--precision", "fp32"],
                 ["match", str(w.emb), str(w.pairs), *BAND, "--block-rows", "7",
                  "--device", "cpu"],
                 ["export", str(w.pairs), str(w.export), "--shard-size", "20"]):
        code, output = run_cli(argv)
        assert code == 0, output
    return w


def run_cli(argv: list[str]) -> tuple[int, str]:
    """pairmine in this process; (exit code, stdout and stderr)."""
    from click.testing import CliRunner

    from pairmine.cli import cli

    result = CliRunner().invoke(cli, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(result.exception))
        return 99, result.output + "\nTraceback (uncaught in the CLI)\n" + tb
    return result.exit_code, result.output


def run_pairmine(argv: list[str], env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """pairmine as a separate process (what kills and locks need)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pairmine", *argv], capture_output=True,
                          text=True, timeout=timeout, env=full_env, check=False)


def store_files(store: Path) -> list[str]:
    """Every file and folder under ``store``, relative, sorted (hidden ones included)."""
    return sorted(str(p.relative_to(store)) for p in store.rglob("*"))


# files whose bytes legitimately differ between two identical runs: timings and run logs
VOLATILE = ("manifest.json", "runs.jsonl")


def data_digests(store: Path) -> dict[str, str]:
    """sha256 of every data file (all files but the manifest and run logs)."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name not in VOLATILE}


def one_error_line(output: str) -> str:
    """The one error line of a failed command: the last line, nothing else but progress bars
    (a run that fails half-way has drawn its bar) before it, no traceback."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), f"no error line last:\n{output}"
    others = [line for line in lines[:-1] if "ETA" not in line]
    assert not others, f"expected one error line, got more:\n{output}"
    return lines[-1]


# ---------------------------------------------------------------------------------------------
# places that cannot be written: a read-only mount, an immutable folder, a full disk


@contextlib.contextmanager
def mounted_tmpfs(options: str) -> Iterator[Path]:
    """A fresh tmpfs (``mount -t tmpfs -o OPTIONS``); skips where mounting is not allowed."""
    where = Path(tempfile.mkdtemp(prefix="pairmine-mnt-"))
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()[:80]})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


@contextlib.contextmanager
def immutable_dir(parent: Path) -> Iterator[Path]:
    """A folder with ``chattr +i`` (even root cannot create files in it)."""
    where = parent / "immutable"
    where.mkdir()
    res = subprocess.run(["chattr", "+i", str(where)], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        pytest.skip(f"chattr +i is not supported here ({res.stderr.strip()[:80]})")
    try:
        yield where
    finally:
        subprocess.run(["chattr", "-i", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system of ``disk`` but ``leave`` bytes; returns the filler to free it."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


# ---------------------------------------------------------------------------------------------
# damaged stores


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(2048))


def _manifest_without(key: str) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        import json

        manifest = json.loads((store / "manifest.json").read_text())
        manifest.pop(key)
        (store / "manifest.json").write_text(json.dumps(manifest))
    return damage


def _object_npy(path: Path) -> None:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def _first(store: Path, pattern: str) -> Path:
    return sorted(store.glob(pattern))[0]


# damage name -> (store kind, how)
DAMAGES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "emb-manifest-random": ("emb", lambda s: _random_bytes(s / "manifest.json")),
    "emb-manifest-no-shards": ("emb", _manifest_without("shards")),
    "emb-npy-random": ("emb", lambda s: _random_bytes(_first(s, "emb/*.npy"))),
    "emb-npy-object": ("emb", lambda s: _object_npy(_first(s, "emb/*.npy"))),
    "emb-meta-random": ("emb", lambda s: _random_bytes(_first(s, "meta/*.parquet"))),
    "pairs-manifest-random": ("pairs", lambda s: _random_bytes(s / "manifest.json")),
    "pairs-manifest-no-shards": ("pairs", _manifest_without("shards")),
    "pairs-shard-random": ("pairs", lambda s: _random_bytes(_first(s, "pairs/*.parquet"))),
    "export-manifest-random": ("export", lambda s: _random_bytes(s / "manifest.json")),
    "export-manifest-no-shards": ("export", _manifest_without("shards")),
}


def damaged_copy(w: World, damage: str, where: Path) -> dict[str, Path]:
    """Copies of the stores with one damaged: {"emb", "pairs", "export"} (pairs made from the
    damaged embeddings when those are damaged, so every consumer meets the damage)."""
    kind, how = DAMAGES[damage]
    where.mkdir(parents=True)
    emb, pairs, export = where / "emb", where / "pairs", where / "spps"
    shutil.copytree(w.emb, emb)
    code, output = run_cli(["match", str(emb), str(pairs), *BAND, "--device", "cpu"])
    assert code == 0, output
    code, output = run_cli(["export", str(pairs), str(export)])
    assert code == 0, output
    how({"emb": emb, "pairs": pairs, "export": export}[kind])
    return {"emb": emb, "pairs": pairs, "export": export}


# ---------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Case:
    """One bad command line: ``argv`` with {emb} {pairs} {export} {images} {spec} {out}
    placeholders; ``out`` is what must hold nothing complete afterwards."""

    name: str
    argv: tuple[str, ...]
    code: int
    says: str  # a phrase the one line must hold


# what each command writes, OUT being the placeholder {out}
WRITERS: dict[str, tuple[str, ...]] = {
    "embed": ("embed", "{images}", "{out}", "--encoder", "{spec}", "--workers", "0",
              "--device", "cpu", "--precision", "fp32"),
    "match": ("match", "{emb}", "{out}", *BAND, "--device", "cpu"),
    "export": ("export", "{pairs}", "{out}"),
    "show": ("show", "{pairs}", "{out}", "--per-view", "5"),
    "calibrate": ("calibrate", "{emb}", "--floor", "0.5", "--device", "cpu", "--out",
                  "{out}/calibration.json"),
    "eval-pairs": ("eval-pairs", "{pairs}", "--no-grid", "--k", "1", "--device", "cpu",
                   "--out", "{out}/accuracy.json"),
    # an image folder (MoCo-v2): the world's export holds pair samples only, which SePP-ID
    # training refuses before it looks at OUT
    "train": ("train", "{images}", "{out}", "--arch", "resnet18-cifar", "--epochs", "1",
              "--batch-size", "4", "--bn-groups", "2", "--device", "cpu", "--workers", "0"),
    "eval": ("eval", "{spec}", "--train", "{images}", "--test", "{images}", "--no-linear",
             "--k", "3", "--device", "cpu", "--workers", "0", "--out", "{out}/eval.json"),
}
# what each command reads, a damaged store in its place
READERS: dict[str, dict[str, tuple[str, ...]]] = {
    "emb": {"match": WRITERS["match"], "calibrate": WRITERS["calibrate"],
            "export": WRITERS["export"], "eval-pairs": WRITERS["eval-pairs"],
            "show": WRITERS["show"]},
    "pairs": {"export": WRITERS["export"], "eval-pairs": WRITERS["eval-pairs"],
              "show": WRITERS["show"]},
    "export": {"verify": ("verify", "{export}"),
               "train": ("train", "{export}", *WRITERS["train"][2:])},
}

NOT_WRITABLE = "read-only file system"
PLACES = (("ro-mount", NOT_WRITABLE), ("immutable", "permission denied"))
UNWRITABLE_CASES = [Case(f"{cmd}-{place}", argv, 1, says)
                    for place, says in PLACES for cmd, argv in WRITERS.items()]
# train reads an export as training data, with its own messages (naming the file)
TRAIN_SAYS = {"export-manifest-random": "manifest.json", "export-manifest-no-shards": "shards"}
# stores open lazily and a command checks the files it reads: export and show read an
# embeddings store's metadata, never its vectors, so a damaged .npy is not theirs to report
NEVER_READ = {("export", "emb-npy-random"), ("export", "emb-npy-object"),
              ("show", "emb-npy-random"), ("show", "emb-npy-object")}
DAMAGED_CASES = [Case(f"{cmd}-{damage}", argv, 1,
                      TRAIN_SAYS[damage] if cmd == "train" else "damaged")
                 for damage, (kind, _) in DAMAGES.items()
                 for cmd, argv in READERS[kind].items() if (cmd, damage) not in NEVER_READ]
OPTION_CASES = [
    # a value the stage's config refuses is a usage error too, exit 2, as click's ranges
    Case("match-seed-negative", ("match", "{emb}", "{out}", "--subset", "5", "--seed", "-1"),
         2, "--seed -1 is not an integer >= 0"),
    Case("export-combined-seed-negative",
         ("export", "{pairs}", "{out}", "--combined", "--seed", "-1"), 2,
         "--seed -1 is not an integer >= 0"),
    Case("calibrate-seed-negative", ("calibrate", "{emb}", "--subset", "5", "--seed", "-1",
                                     "--out", "{out}/c.json"), 2,
         "--seed -1 is not an integer >= 0"),
    Case("match-min-97", ("match", "{emb}", "{out}", "--min", "97"), 2, "outside [-1, 1]"),
    Case("match-subset-1.5", ("match", "{emb}", "{out}", "--subset", "1.5"), 2,
         "not a fraction in (0, 1]"),
    Case("match-min-above-max", ("match", "{emb}", "{out}", "--min", "0.9", "--max", "0.8"),
         2, "greater than --max"),
    Case("train-lambda-2", ("train", "{export}", "{out}", "--lambda", "2"), 2,
         "--lambda must be in [0, 1]"),
    # the data's problems exit 1: a subset larger than the store
    Case("match-subset-too-large", ("match", "{emb}", "{out}", "--subset", "1000"), 1,
         "larger than the store"),
    Case("match-min-abc", ("match", "{emb}", "{out}", "--min", "abc"), 2, "not a valid float"),
    Case("match-block-rows-0", ("match", "{emb}", "{out}", "--block-rows", "0"), 2,
         "not in the range"),
    Case("embed-batch-size-0", ("embed", "{images}", "{out}", "--encoder", "{spec}",
                                "--batch-size", "0"), 2, "not in the range"),
    Case("export-max-shard-bytes", ("export", "{pairs}", "{out}", "--max-shard-bytes", "lots"),
         2, "not a size"),
    Case("show-thumb-5", ("show", "{pairs}", "{out}", "--thumb", "5"), 2, "not in the range"),
    Case("no-such-command", ("mach", "{emb}", "{out}"), 2, "No such command"),
    Case("missing-argument", ("match", "{emb}"), 2, "Missing argument"),
]

# what a finished output holds: none of these may exist after a failure
COMPLETE_MARKERS = ("manifest.json", "index.html", "calibration.json", "accuracy.json",
                    "eval.json", "c.json", "checkpoint-last.pt", "summary.json")


def fill_in(argv: tuple[str, ...], paths: dict[str, str]) -> list[str]:
    return [a.format(**paths) for a in argv]


def check_case(case: Case, argv: list[str], out: Path) -> str:
    """Run one case; returns the one line it printed (asserts everything else)."""
    code, output = run_cli(argv)
    assert code == case.code, f"{case.name}: exit {code}, expected {case.code}:\n{output}"
    line = one_error_line(output)
    assert case.says in line, f"{case.name}: {line!r} does not say {case.says!r}"
    if out.exists():
        left = [str(p) for p in out.rglob("*") if p.name in COMPLETE_MARKERS]
        assert not left, f"{case.name}: a failed run left {left}"
    return line


# ---------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


def _paths(w: World, out: Path, **override: Path) -> dict[str, str]:
    paths = {"emb": w.emb, "pairs": w.pairs, "export": w.export, "images": w.images,
             "out": out, **override}
    return {**{k: str(v) for k, v in paths.items()}, "spec": w.spec}


@pytest.mark.parametrize("case", UNWRITABLE_CASES, ids=lambda c: c.name)
def test_output_not_writable(case: Case, world: World, tmp_path: Path) -> None:
    place = case.name.rsplit("-", 2 if case.name.endswith("ro-mount") else 1)[1:]
    where: contextlib.AbstractContextManager[Path] = (
        mounted_tmpfs("ro,size=1m") if "ro" in place else immutable_dir(tmp_path))
    with where as parent:
        out = parent / "out"
        check_case(case, fill_in(case.argv, _paths(world, out)), out)
        assert not out.exists()


@pytest.mark.parametrize("case", DAMAGED_CASES, ids=lambda c: c.name)
def test_damaged_input_store(case: Case, world: World, tmp_path: Path) -> None:
    damage = next(d for d in DAMAGES if case.name.endswith(d))
    stores = damaged_copy(world, damage, tmp_path / "stores")
    out = tmp_path / "out"
    line = check_case(case, fill_in(case.argv, _paths(world, out, **stores)), out)
    if case.says == "damaged":
        assert "re-create it with `pairmine" in line, line


@pytest.mark.parametrize("case", OPTION_CASES, ids=lambda c: c.name)
def test_bad_option(case: Case, world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    check_case(case, fill_in(case.argv, _paths(world, out)), out)
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["embed", "match", "export"])
def test_disk_full_is_one_error_and_resumes(cmd: str, world: World) -> None:
    disk_full_then_resume(world, cmd)


def disk_full_then_resume(world: World, cmd: str) -> None:
    """A run into a nearly full disk fails with one line; once space is freed the same
    command resumes to the store an undisturbed run writes."""
    reference = {"embed": world.emb, "match": world.pairs, "export": world.export}[cmd]
    argv = {"embed": WRITERS["embed"] + ("--shard-size", "8"),
            "match": WRITERS["match"] + ("--block-rows", "7"),
            "export": WRITERS["export"] + ("--shard-size", "20")}[cmd]
    size = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    with mounted_tmpfs(f"size={2 * size + (1 << 20)}") as disk:
        out = disk / "out"
        # room for about half the store: a write half-way does not fit
        filler = fill(disk, leave=size // 2)
        case = Case(f"{cmd}-disk-full", argv, 1, "the disk is full")
        check_case(case, fill_in(argv, _paths(world, out)), out)
        filler.unlink()
        code, output = run_cli(fill_in(argv, _paths(world, out)))
        assert code == 0, output
        assert store_files(out) == store_files(reference)
        assert data_digests(out) == data_digests(reference)


def test_one_line_even_when_a_message_holds_newlines(world: World, tmp_path: Path) -> None:
    out = tmp_path / "two\nlines"
    code, output = run_cli(fill_in(WRITERS["match"], _paths(world, out, emb=tmp_path / "no\nne")))
    assert code == 1
    assert "does not exist" in one_error_line(output)
