"""Where and how to compute: device, precision, CPU feature detection. Shared by the stages."""

from __future__ import annotations

import functools
import logging
import os

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


def cpu_has_fast_bf16() -> bool:
    """True where bf16 matmul runs natively (AVX-512 BF16 or AMX). On AVX2-only CPUs torch
    emulates bf16 about 100× slower than fp32, so it must never be picked there."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(precision: str, device: str, *,
                      choices: tuple[str, ...] = PRECISIONS) -> str:
    """The one precision policy (embed and train): ``auto`` → bf16 on CUDA, and on a CPU bf16
    only where it runs natively, else fp32. bf16 asked for on a CPU without native bf16 is an
    error (emulated, it is ~100x slower than fp32); fp16 is for GPUs only. ``choices``: the
    precisions the caller supports."""
    if precision not in choices:
        raise ConfigError(f"unknown precision {precision!r}",
                          f"choose {', '.join(choices)}")
    on_cuda = device_kind(device) == "cuda"
    if precision == "auto":
        return "bf16" if on_cuda or cpu_has_fast_bf16() else "fp32"
    if not on_cuda and precision == "fp16":
        raise ConfigError("fp16 is not supported on the CPU", "use fp32 (or bf16 on a CPU "
                          "with native bf16)")
    if not on_cuda and precision == "bf16" and not cpu_has_fast_bf16():
        raise ConfigError("this CPU has no native bf16 (no AVX-512 BF16/AMX): bf16 would run "
                          "emulated, ~100x slower than fp32", "use --precision fp32 or auto")
    return precision


def cpu_count() -> int:
    """Cores this process may use (cgroup/affinity aware where the OS says; on a Ray worker,
    the CPUs Ray gave the running unit: ``PAIRMINE_CPUS``, set by pairmine.scale.executor)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = max(1, os.cpu_count() or 1)
    granted = os.environ.get("PAIRMINE_CPUS", "")
    return min(cores, int(granted)) if granted.isdigit() and int(granted) > 0 else cores


def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    return f"{platform.processor() or platform.machine()} ({cpu_count()} cores)"
