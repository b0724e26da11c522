"""What the machine offers the engines: cores, CPU vector extensions, a CUDA device, Triton."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pairmine.runtime import cpu_has_fast_bf16


@functools.cache
def cpu_capability() -> str:
    """torch's CPU kernel level: "AVX2", "AVX512", ... ("DEFAULT" without vector units)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def cpu_tile_dtype() -> tuple[str, str]:
    """The CPU prefilter precision and why. Always float32: on AVX2-only CPUs torch emulates
    bf16 about 100x slower than fp32; where AVX-512 BF16/AMX exist bf16 could be faster, but
    its 2^-8 rounding would widen the margin 30000-fold and defeat the pruning bound."""
    native = cpu_has_fast_bf16()
    why = ("bf16 is native here but its rounding would swamp the pruning margin" if native
           else "no native bf16 on this CPU (AVX2 emulates it ~100x slower than fp32)")
    return "float32", why


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # type: ignore[import-untyped]  # noqa: F401
    except Exception:  # any import failure means: not usable here
        return False
    return True


def strict_matmul() -> Callable[[], None]:
    """Make float32 GEMMs full fp32 (no TF32 on GPUs, no bf16 on CPUs that have it) and fp16
    GEMMs reduce in fp32, as the margins assume. Returns the function that restores the
    caller's settings. These are process-wide switches: an engine holds them from
    ``prepare`` to ``close``. Uses torch's per-backend ``fp32_precision`` API where it exists
    (mixing it with the legacy ``allow_tf32`` flags makes torch raise), the legacy one before.
    """
    import torch

    backends = [b for b in (torch.backends.cuda.matmul, getattr(torch.backends, "mkldnn", None))
                if b is not None and hasattr(getattr(b, "matmul", b), "fp32_precision")]
    targets = [getattr(b, "matmul", b) for b in backends]
    saved_new = [t.fp32_precision for t in targets]
    saved_legacy = None if targets else torch.get_float32_matmul_precision()
    matmul = torch.backends.cuda.matmul
    saved_fp16 = matmul.allow_fp16_reduced_precision_reduction
    for t in targets:
        t.fp32_precision = "ieee"
    if saved_legacy is not None:
        torch.set_float32_matmul_precision("highest")
    matmul.allow_fp16_reduced_precision_reduction = False

    def restore() -> None:
        for t, v in zip(targets, saved_new, strict=True):
            t.fp32_precision = v
        if saved_legacy is not None:
            torch.set_float32_matmul_precision(saved_legacy)
        matmul.allow_fp16_reduced_precision_reduction = saved_fp16

    return restore


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU kernels on ``n`` threads for a while. torch sizes its pool by the
    machine's cores, not the process's CPU affinity: more threads than usable cores make
    every GEMM wait on descheduled threads (measured: 10x slower eigh and QR)."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)
