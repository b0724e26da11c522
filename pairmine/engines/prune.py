"""Exact pruning: a rotation that concentrates energy, and a provable upper bound on x·y.

For an orthogonal ``R`` and ``x' = R x = [x'_1, x'_2]`` (first ``d'`` coordinates, the rest):

    x·y = x'·y' = x'_1·y'_1 + x'_2·y'_2 <= x'_1·y'_1 + |x'_2| |y'_2|     (Cauchy-Schwarz)

With ``x~ = [x'_1, |x'_2|]`` (``d' + 1`` numbers) the bound is ``x~·y~``: ONE GEMM of width
``d' + 1`` bounds every pair, and only pairs whose bound reaches ``lo - margin`` can be in the
band (Bayardo et al. 2007; L2AP, Anastasiu & Karypis 2014). ``R`` comes from the eigenvectors
of the (uncentred) second moment of a sample, so ``x'_1`` holds most of the energy; any
orthogonal ``R`` keeps the bound valid, the sample only decides how tight it is.

Floating point: ``R`` is orthogonal only to ``eps`` (measured), ``x'`` is computed in float64,
and the tail norm is ``sqrt(|x|^2 - |x'_1|^2)`` inflated by its own error bound so that it can
only be too large (a larger tail keeps the bound an upper bound). The rest of the error (fp32
rounding of ``x~``, the fp32 GEMM) is the margin, see :func:`pruned_margin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pairmine.engines.band import MARGIN_FLOOR, U64, Problem

U32 = 2.0**-24
LADDER = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
SAMPLE_ROWS = 8192  # rows for the second moment
PAIR_SAMPLE = 2048  # 2048 x 2048 sample pairs estimate survivor rates down to ~1e-6
# Cost model for this kind of CPU (2-core AVX2 EPYC, torch fp32 GEMM + row max, cache-sized
# tiles; measured with benchmarks/match.py --calibrate): ns per pair for a tile of width K is
# output-bound below K ~ 32 and compute-bound above; a surviving candidate costs a row
# extraction plus a float64 rescore.
NS_PER_PAIR_FLOOR = 0.42
NS_PER_PAIR_PER_DIM = 0.0135
NS_PER_CANDIDATE = 2000.0


def ns_per_pair(width: int) -> float:
    return max(NS_PER_PAIR_FLOOR, NS_PER_PAIR_PER_DIM * width)


@dataclass(frozen=True)
class Rotation:
    r: np.ndarray  # (D, D) float64, row k = k-th principal direction (energy descending)
    eps: float  # bound on the spectral norm of R R^T - I
    energy: np.ndarray  # (D,) share of the sample's energy in the first k+1 coordinates


def sample_positions(m: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed, sorted random sample of target positions (sorted: memmap-friendly reads)."""
    if m <= size:
        return np.arange(m, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(m, size=size, replace=False)).astype(np.int64)


def sample_rows(problem: Problem, positions: np.ndarray) -> np.ndarray:
    ids = problem.target_ids[positions]
    return np.asarray(problem.vectors[ids], dtype=np.float64)


def fit_rotation(sample: np.ndarray) -> Rotation:
    """Principal directions of the sample's second moment, as an orthogonal float64 matrix."""
    import torch

    d = sample.shape[1]
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    # fp32 GEMM for speed: M only has to be symmetric; eigh makes R orthogonal regardless
    m = (x.T @ x).double().numpy()
    m = (m + m.T) / 2.0
    w, v = np.linalg.eigh(m)
    order = np.argsort(w)[::-1]
    r = np.ascontiguousarray(v[:, order].T)
    e = r @ r.T - np.eye(d)
    eps = float(d * np.abs(e).max()) + d * U64  # |E|_2 <= |E|_F <= d max|E_ij|
    w = np.clip(w[order], 0.0, None)
    energy = np.cumsum(w) / max(float(w.sum()), 1e-300)
    return Rotation(r=r, eps=eps, energy=energy)


def tail_inflation(rot: Rotation, d: int) -> float:
    """``delta``: the computed ``|x|^2 - |x'_1|^2`` is within ``delta |x|^2`` of the true tail
    energy (orthogonality error of R, float64 rounding of the rotation and of both sums)."""
    return 3.0 * (2.0 * rot.eps + (d + 2) * U64) * 2.0


def pruned_margin(dims: int, rot: Rotation, d: int) -> float:
    """Relative error bound of the fp32 bound GEMM (multiply by max |x| * max |y|)."""
    k = dims + 1
    rounding = 2 * U32 + U32 * U32  # x~ and y~ rounded to fp32
    gemm = k * U32 / (1 - k * U32)  # fp32 dot of k terms, any order, FMA or not
    rotation = 2.0 * (rot.eps + (d + 2) * U64)  # head dot through the float64 rotation
    return max(2.0 * (rounding + gemm + rotation), MARGIN_FLOOR)


def full_margin(d: int) -> float:
    """Relative error bound of an fp32 GEMM on the stored rows (conversion to fp32 is exact)."""
    return max(2.0 * d * U32 / (1 - d * U32), MARGIN_FLOOR)


def head_matrix(x64: np.ndarray, rot: Rotation, dims: int) -> np.ndarray:
    """``x~ = [R_1 x, tail]`` for rows ``x64`` (float64), as float32 ``(n, dims + 1)``."""
    r1 = rot.r[:dims]
    h = x64 @ r1.T
    n2 = np.einsum("ij,ij->i", x64, x64)
    t2 = np.maximum(n2 - np.einsum("ij,ij->i", h, h), 0.0) + tail_inflation(rot, x64.shape[1]) * n2
    out = np.empty((len(x64), dims + 1), dtype=np.float32)
    out[:, :dims] = h
    out[:, dims] = np.sqrt(t2)
    return out


@dataclass(frozen=True)
class DimsChoice:
    dims: int | None  # None: no pruning, full-D fp32 tiles
    rates: dict[int, float]  # survivor rate of the bound per d' on the sample pairs
    full_rate: float  # rate of pairs passing the two-sided full-D gate
    costs: dict[str, float]  # modelled ns per pair
    sample_pairs: int


def choose_dims(sample: np.ndarray, rot: Rotation, thr_rel_lo: float, thr_rel_hi: float,
                ladder: Sequence[int] = LADDER) -> DimsChoice:
    """Pick ``d'`` by the cost model on disjoint sample pairs.

    ``thr_rel_lo``/``thr_rel_hi`` are the gate thresholds (band bounds widened by the margin).
    Rates are measured in float64 on the exact bound; the fp32 details only move them by the
    margin, which is far below the sampling noise.
    """
    n, d = sample.shape
    half = min(n // 2, PAIR_SAMPLE)
    dims_ok = [k for k in ladder if k + 1 < d]
    if half < 16 or not dims_ok:
        return DimsChoice(None, {}, 1.0, {}, 0)
    a, b = sample[:half], sample[half:2 * half]
    ya, yb = a @ rot.r.T, b @ rot.r.T
    na2, nb2 = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    g = np.zeros((half, half))
    rates: dict[int, float] = {}
    prev = 0
    for k in dims_ok:
        g += ya[:, prev:k] @ yb[:, prev:k].T
        prev = k
        ta = np.sqrt(np.maximum(na2 - np.einsum("ij,ij->i", ya[:, :k], ya[:, :k]), 0.0))
        tb = np.sqrt(np.maximum(nb2 - np.einsum("ij,ij->i", yb[:, :k], yb[:, :k]), 0.0))
        rates[k] = float(np.mean(g + np.outer(ta, tb) >= thr_rel_lo))
    s = a @ b.T
    full_rate = float(np.mean((s >= thr_rel_lo) & (s <= thr_rel_hi)))
    costs = {str(k): ns_per_pair(k + 1) + rates[k] * NS_PER_CANDIDATE for k in dims_ok}
    costs["full"] = ns_per_pair(d) + full_rate * NS_PER_CANDIDATE
    best = min(costs, key=lambda c: costs[c])
    return DimsChoice(None if best == "full" else int(best), rates, full_rate, costs,
                      half * half)
