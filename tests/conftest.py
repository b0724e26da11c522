"""Shared fixtures: generated image folders, a deterministic toy encoder, the shared data."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_TEST_TGZ = SHARED_DATA / "cifar10-test-jpeg.tar.gz"
RESNET20 = SHARED_DATA / "resnet20-cifar10.th"


def pytest_configure(config: pytest.Config) -> None:
    import os

    # `--precision auto` times bf16 against fp32 on a CPU with native bf16, and a timed choice
    # can go either way between two runs: tests compare stores byte for byte, so auto is fp32
    # here (child processes inherit it); the trial's own tests patch its timings and unset it
    os.environ.setdefault("PAIRMINE_PRECISION_TRIAL", "0")
    _register_toy_encoder()
    _register_required_marker(config)


# `-n auto` (pyproject addopts) runs the suite in pytest-xdist workers, one test file per worker
# at a time (`--dist loadfile`: module fixtures are built once). Each worker imports torch and
# may start a Ray cluster: more than 8 costs memory, not time.
MAX_TEST_WORKERS = 8


@pytest.hookimpl(optionalhook=True)  # the hook exists only where pytest-xdist is installed
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    import os

    return max(1, min(MAX_TEST_WORKERS, len(os.sched_getaffinity(0))))


def _register_toy_encoder() -> None:
    """`toy:SEED` — a tiny convolutional encoder with seeded random weights: deterministic,
    instant on the CPU, 16-D features, 32-px ImageNet-normalised input. Tests only."""
    from pairmine.encoders.base import Encoder, EncoderKind, Preprocess, register_encoder

    def load(args: str, options: object) -> Encoder:
        import torch  # here, not at registration: the xdist controller never needs torch
        from torch import nn

        seed = int(args)
        gen = torch.Generator().manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        return Encoder(spec=f"toy:{seed}", model=model, dim=16, preprocess=Preprocess.cifar(),
                       arch="toy", features="backbone")

    register_encoder(EncoderKind(name="toy", load=load, usage="toy:SEED",
                                 help="test-only deterministic encoder"))


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30), fmt: str = "JPEG",
                mode: str = "RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes x 7 images of varied sizes, JPEG and PNG."""
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "emu"]):
        for i in range(7):
            fmt, ext = ("PNG", "png") if i % 3 == 0 else ("JPEG", "jpg")
            write_image(root / name / f"{i:03d}.{ext}", seed=100 * c + i,
                        size=(32 + 5 * i, 40 - i), fmt=fmt)
    return root


@pytest.fixture(scope="session")
def cifar_test_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CIFAR-10 test JPEGs from ../shared/data, unpacked once per session: under xdist
    once for all workers (in their common temporary folder, under a lock), since unpacking
    10,000 files costs seconds. Tests read it, never write it."""
    import fcntl
    import os

    if not CIFAR_TEST_TGZ.exists():
        pytest.skip("../shared/data is not present")
    base = tmp_path_factory.getbasetemp()
    # an xdist worker's folder is popen-gwN inside the run's: that one is common to all
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "cifar10-test"
    with open(shared / "cifar10-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / ".unpacked"
        if not done.exists():
            with tarfile.open(CIFAR_TEST_TGZ) as tar:
                tar.extractall(root, filter="data")
            done.touch()
    return root / "cifar10" / "test"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Path]:
    """One local Ray for the session, or for an xdist worker's share of it (2 CPUs, 2 fake
    GPUs; see ../shared/notes/scale-out.md); starting one costs ~10 s:
    no dashboard, no usage stats, no auth token, a short temp dir (Unix socket paths are
    limited to 107 bytes). Yields the file that arms pairmine's fault hook on its workers
    (they inherit the variable naming it; a test arms it by writing the file)."""
    import os
    import shutil
    import tempfile

    ray = pytest.importorskip("ray")
    from pairmine.scale.executor import FAULT_ENV

    temp = Path(tempfile.mkdtemp(prefix="pmr", dir="/tmp"))
    fault = temp / "fault"
    env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", FAULT_ENV: f"@{fault}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _temp_dir=str(temp),
             object_store_memory=100 << 20, log_to_driver=False)
    yield fault
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---------------------------------------------------------------------------------------------
# CI: a skipped test is a test not done. Tests marked `required` (the files below are marked
# whole) and tests skipped because a [dev] extra is missing fail the session when CI is set:
# CI installs every extra and chromium, so such a skip means a broken install, not a choice.

REQUIRED_FILES = ("test_show_browser.py", "test_interop.py", "test_encoders*.py")
# top-level modules of the [dev] extras (pyproject.toml)
DEV_MODULES = frozenset({"timm", "safetensors", "open_clip", "transformers", "ray", "datasets",
                         "duckdb", "importlinter", "hypothesis", "sklearn", "webdataset",
                         "xdist", "lightly"})
# pytest.importorskip's two reasons: the module is absent, or older than asked
_IMPORT_SKIP = (r"could not import '([A-Za-z0-9_.]+)'",
                r"module '([A-Za-z0-9_.]+)' has __version__")
_skipped_required: list[tuple[str, str]] = []  # (node id, reason), in the order they ran


def in_ci() -> bool:
    """CI services set ``CI`` (``CI=true``); ``CI=0``/``false`` or unset is a developer run."""
    import os

    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _register_required_marker(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "required: must run in CI (CI set): a skip fails the "
                                       "session; every test of " + ", ".join(REQUIRED_FILES))
    _skipped_required.clear()


def is_required_file(name: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in REQUIRED_FILES)


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    # a skip's longrepr is (file, line, "Skipped: reason")
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def missing_dev_extra(reason: str) -> str | None:
    """The [dev] extra's module an importorskip ``reason`` names, if it names one."""
    import re

    for pattern in _IMPORT_SKIP:
        found = re.search(pattern, reason)
        if found and found.group(1).split(".")[0] in DEV_MODULES:
            return found.group(1)
    return None


# The longest test files (seconds on 2 cores), handed to the xdist workers first so that no
# worker is left running a long file alone at the end (`--dist loadfile` hands out files in
# collection order). Only the order changes; a file missing here runs after these.
LONGEST_FIRST = ("test_ray.py", "test_crash_resume.py", "test_encoders.py",
                 "test_encoders_libs.py", "test_train.py", "test_one_writer.py",
                 "test_interop.py", "test_bad_input.py", "test_ci_required.py", "test_demo.py",
                 "test_embed.py", "test_show_browser.py", "test_engines.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_required_file(item.path.name):
            item.add_marker(pytest.mark.required)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order in a file


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A whole module skipped at import (``importorskip`` at the top) has no items to mark."""
    if report.skipped:
        reason = _skip_reason(report)
        name = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
        if is_required_file(name) or missing_dev_extra(reason):
            _skipped_required.append((report.nodeid, reason))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an xfail ran: not a skip
        reason = _skip_reason(report)
        if "required" in report.keywords or missing_dev_extra(reason):
            _skipped_required.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_required and in_ci() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _skipped_required:
        return
    verdict = "CI fails" if in_ci() else "CI would fail"
    terminalreporter.write_sep("=", f"{len(_skipped_required)} required test(s) skipped: "
                                    f"{verdict}", red=True, bold=True)
    for nodeid, reason in _skipped_required:
        terminalreporter.write_line(f"REQUIRED SKIPPED {nodeid}: {reason}")
