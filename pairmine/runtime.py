"""Where and how to compute: device, precision, CPU feature detection. Shared by the stages."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairmine.errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def device_kind(device: str) -> str:
    """``cpu``, ``cuda`` (for ``cuda`` and ``cuda:N``) or ``auto``; anything else is an error.
    The one check of a device name, for every stage (no torch import)."""
    kind, _, index = device.partition(":")
    if device in DEVICES or (kind == "cuda" and index.isdigit()):
        return kind
    raise ConfigError(f"unknown device {device!r}", "choose auto, cpu, cuda or cuda:N")


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is present, else ``cpu``; ``cuda``/``cuda:N`` without that
    GPU is an error. The one device resolver (embed, eval, train and the engines use it)."""
    kind = device_kind(device)
    if kind == "cpu":
        return "cpu"
    import torch

    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but no CUDA device is available",
                          "use --device cpu or auto")
    index = device.partition(":")[2]
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} "
                          "CUDA devices", f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """True where bf16 matmul runs natively (AVX-512 BF16 or AMX). On AVX2-only CPUs torch
    emulates bf16 about 100× slower than fp32, so it must never be picked there."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(precision: str, device: str, *,
                      choices: tuple[str, ...] = PRECISIONS) -> str:
    """The one precision policy without a trial (embed and train): an explicit precision is
    checked (bf16 on a CPU without native bf16 is refused: emulated, it is ~100x slower than
    fp32; fp16 is for GPUs only); ``auto`` → bf16 on CUDA, fp32 on a CPU. Where the CPU has
    native bf16, :func:`choose_precision` decides ``auto`` by a timed trial of the model
    instead. ``choices``: the precisions the caller supports."""
    if precision not in choices:
        raise ConfigError(f"unknown precision {precision!r}",
                          f"choose {', '.join(choices)}")
    on_cuda = device_kind(device) == "cuda"
    if precision == "auto":
        return "bf16" if on_cuda else "fp32"
    if not on_cuda and precision == "fp16":
        raise ConfigError("fp16 is not supported on the CPU", "use fp32 (or bf16 on a CPU "
                          "with native bf16)")
    if not on_cuda and precision == "bf16" and not cpu_has_fast_bf16():
        raise ConfigError("this CPU has no native bf16 (no AVX-512 BF16/AMX): bf16 would run "
                          "emulated, ~100x slower than fp32", "use --precision fp32 or auto")
    return precision


# bf16 must beat fp32 by this factor to be chosen: its 8-bit mantissa costs accuracy, worth it
# only for a clear gain, not for a timing's noise
BF16_MARGIN = 0.9
TRIAL_CANDIDATES = ("fp32", "bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why; ``trial``: seconds per step of each candidate where
    a timed trial decided (recorded in the run's log and metadata)."""

    precision: str
    reason: str
    trial: dict[str, float] | None = None

    def describe(self) -> dict[str, Any]:
        return {"precision": self.precision, "reason": self.reason, "trial_seconds": self.trial}


# "0" turns the trial off (auto is then fp32 on every CPU): for runs that must give the same
# bytes as another run, since a timed choice can go either way where the two are close
PRECISION_TRIAL_ENV = "PAIRMINE_PRECISION_TRIAL"


def needs_trial(precision: str, device: str) -> bool:
    """``auto`` on a CPU with native bf16: only a measurement can tell whether bf16 autocast
    is faster for this model (measured: 10% slower for a small net, 2.1x faster for the CIFAR
    ResNet-18, on the same CPU). ``PAIRMINE_PRECISION_TRIAL=0`` turns it off."""
    if os.environ.get(PRECISION_TRIAL_ENV, "").strip() == "0":
        return False
    return precision == "auto" and device_kind(device) == "cpu" and cpu_has_fast_bf16()


def choose_precision(precision: str, device: str, step: Callable[[str], object] | None, *,
                     choices: tuple[str, ...] = PRECISIONS) -> PrecisionChoice:
    """The run's precision. Explicit: checked by :func:`resolve_precision`. ``auto`` on CUDA:
    bf16; on a CPU without native bf16: fp32; on a CPU with native bf16 and a ``step``
    (``step(precision)`` runs one forward (+ backward) of the run's model on a batch): each
    of fp32 and bf16 is timed (:func:`time_precisions`) and bf16 is chosen where a step takes
    under ``BF16_MARGIN`` (0.9) of fp32's time, else fp32."""
    resolved = resolve_precision(precision, device, choices=choices)
    if precision != "auto":
        return PrecisionChoice(resolved, "asked for")
    if not needs_trial(precision, device) or step is None:
        why = ("auto on CUDA" if device_kind(device) == "cuda"
               else "auto on a CPU without native bf16" if not cpu_has_fast_bf16()
               else f"auto, trial turned off ({PRECISION_TRIAL_ENV}=0)"
               if os.environ.get(PRECISION_TRIAL_ENV, "").strip() == "0"
               else "auto without a trial")
        return PrecisionChoice(resolved, why)
    seconds = time_precisions(step, TRIAL_CANDIDATES)
    chosen = "bf16" if seconds["bf16"] < BF16_MARGIN * seconds["fp32"] else "fp32"
    ratio = seconds["fp32"] / max(seconds["bf16"], 1e-12)
    choice = PrecisionChoice(chosen, f"auto: timed trial, bf16 {ratio:.2f}x the speed of fp32",
                             {k: round(v, 5) for k, v in seconds.items()})
    log.info("precision %s (%s; seconds per step: %s)", chosen, choice.reason, choice.trial)
    return choice


def time_precisions(step: Callable[[str], object], candidates: tuple[str, ...],
                    repeats: int = 3) -> dict[str, float]:
    """Seconds per ``step(precision)`` for each candidate: one untimed warm-up each (oneDNN
    builds its kernels on first use), then ``repeats`` rounds taken in turn (fp32, bf16,
    fp32, ...) so a change of the machine's load hits both alike; the fastest round counts
    (the one least disturbed by other processes)."""
    import time

    for name in candidates:
        step(name)
    best = {name: float("inf") for name in candidates}
    for _ in range(repeats):
        for name in candidates:
            t = time.perf_counter()
            step(name)
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def cpu_count() -> int:
    """CPUs this process may really use: its affinity mask (``taskset``, Slurm's cpuset),
    capped by a cgroup CPU quota (Docker ``--cpus``, Kubernetes limits: cgroup v2 ``cpu.max``
    or v1 ``cpu.cfs_quota_us``), rounded up, at least 1. ``os.cpu_count()`` counts the
    machine's cores, and a thread pool sized by it oversubscribes every such process. On a
    Ray worker, also capped by the CPUs Ray gave the running unit (``PAIRMINE_CPUS``)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        usable = min(usable, math.ceil(quota))
    # on a Ray worker: the CPUs Ray gave the running unit (set by pairmine.scale.executor)
    granted = os.environ.get("PAIRMINE_CPUS", "")
    if granted.isdigit() and int(granted) > 0:
        usable = min(usable, int(granted))
    return max(1, usable)


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``quota / period``), or None when
    unlimited or unknown. Reads the cgroup v2 ``cpu.max`` of the process's own group (and its
    parents: a limit anywhere above applies), else cgroup v1's ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``."""
    root = CGROUP_ROOT if root is None else root
    limits: list[float] = []
    for group in _own_cgroups():
        version, controllers, path = group
        base = root if version == 2 else root / "cpu"
        if version == 1 and "cpu" not in controllers.split(","):
            continue
        if version == 1 and not base.is_dir():
            base = root / controllers  # "cpu,cpuacct" mounted as one folder
        folder = base / path.lstrip("/")
        while True:  # this group, then each parent up to the mount point
            limit = _read_cpu_limit(folder, version)
            if limit is not None:
                limits.append(limit)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def _own_cgroups() -> list[tuple[int, str, str]]:
    """(version, controllers, path) of each line of /proc/self/cgroup."""
    try:
        text = Path("/proc/self/cgroup").read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    groups = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            groups.append((2 if parts[0] == "0" and not parts[1] else 1, parts[1], parts[2]))
    return groups


def _read_cpu_limit(folder: Path, version: int) -> float | None:
    try:
        if version == 2:
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or "100000")
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def compute_threads(decode_workers: int = 0) -> int:
    """torch's intra-op threads for a CPU stage: the usable CPUs minus the decode worker
    processes beside it, at least 1. An OpenMP team waits for its slowest thread at the end of
    every operator, so a team larger than the free CPUs stalls on each descheduled thread:
    measured here, 2 threads beside one busy process train 7x slower than 1 thread."""
    return max(1, cpu_count() - max(0, decode_workers))


def default_threads(decode_workers: int = 0) -> int:
    """:func:`compute_threads`, never above torch's current count: a limit set before the
    stage runs (``OMP_NUM_THREADS``, a Ray task's CPUs, a caller's ``torch.set_num_threads``)
    still holds."""
    import torch

    return max(1, min(torch.get_num_threads(), compute_threads(decode_workers)))


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[int]:
    """torch's CPU kernels on ``n`` threads for a while, the caller's count restored after."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if before != n:
            torch.set_num_threads(before)


def prefer_passive_waits() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) unless the
    user chose otherwise: a spinning thread burns the core that another process, a decode
    worker or the team's own straggler needs. OpenMP reads this once, when torch loads, so
    the CLI calls it before any import of torch; afterwards it changes nothing."""
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    return f"{cpu_model()} ({cpu_count()} cores)"
