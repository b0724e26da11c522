"""Where and how to compute: device, precision, CPU feature detection. Shared by the stages."""

from __future__ import annotations

import functools
import logging
import os

from pairmine.errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is present, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}", "choose auto, cpu or cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available",
                          "use --device cpu or auto")
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


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` → bf16 on CUDA, fp32 on CPU (bf16 only where the CPU runs it natively)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", "choose fp32, bf16 or fp16")
    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if device == "cpu" and precision == "fp16":
        raise ConfigError("fp16 inference is not supported on the CPU", "use fp32 or bf16")
    if device == "cpu" and precision == "bf16" and not cpu_has_fast_bf16():
        log.warning("this CPU has no native bf16 (no AVX-512 BF16/AMX): bf16 runs emulated and "
                    "far slower than fp32")
    return precision


def cpu_count() -> int:
    """Cores this process may use (cgroup/affinity aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    return f"{platform.processor() or platform.machine()} ({cpu_count()} cores)"
