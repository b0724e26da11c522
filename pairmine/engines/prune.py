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

from pairmine.engines.band import MARGIN_FLOOR, U64

U32 = 2.0**-24
LADDER = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
SAMPLE_ROWS = 8192  # rows for the second moment
PAIR_SAMPLE = 1024  # 1024 x 1024 sample pairs: rates to ~1e-6, below what the costs notice
FULL_EIGH_BELOW = 512  # a full eigendecomposition up to this dimension, top D/4 above
SUBSPACE_ITERATIONS = 4
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
    r: np.ndarray  # (k, D) float64, orthonormal rows = principal directions, energy descending
    eps: float  # bound on the spectral norm of R R^T - I
    energy: np.ndarray  # (k,) share of the sample's energy in the first j+1 directions


def fit_rotation(sample: np.ndarray, full_below: int = FULL_EIGH_BELOW) -> Rotation:
    """Principal directions of the sample's second moment, as orthonormal float64 rows.

    Up to ``full_below`` dimensions: all D directions (one float64 eigh). Above: only the top
    ``D/4`` (the most a head can usefully have), by subspace iteration and Rayleigh-Ritz,
    which costs a few GEMMs instead of a D x D eigendecomposition. The bound needs nothing
    more: the tail norm comes from ``|x|^2 - |R_1 x|^2``.
    """
    import torch

    d = sample.shape[1]
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    # fp32 GEMM for speed: M only has to be symmetric; orthogonality comes from eigh/QR
    m = (x.T @ x).double()
    m = (m + m.T) / 2.0
    trace = max(float(torch.trace(m)), 1e-300)
    if d < full_below:
        w, v = torch.linalg.eigh(m)
        r = v.flip(1).T.contiguous()
        w = w.flip(0)
    else:
        k = d // 4
        gen = torch.Generator().manual_seed(0)
        q = torch.linalg.qr(torch.randn(d, k + 16, generator=gen, dtype=torch.float64))[0]
        for _ in range(SUBSPACE_ITERATIONS):
            q = torch.linalg.qr(m @ q)[0]
        w, v = torch.linalg.eigh(q.T @ m @ q)  # Rayleigh-Ritz in the subspace
        r = (q @ v.flip(1)[:, :k]).T.contiguous()
        r = torch.linalg.qr(r.T)[0].T.contiguous()  # re-orthonormalise in float64
        w = w.flip(0)[:k]
    r_np = r.numpy()
    e = r_np @ r_np.T - np.eye(len(r_np))
    eps = float(len(r_np) * np.abs(e).max()) + d * U64  # |E|_2 <= |E|_F <= k max|E_ij|
    energy = np.cumsum(np.clip(w.numpy(), 0.0, None)) / trace
    return Rotation(r=r_np, eps=eps, energy=energy)


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
    full_rate: float | None  # rate passing the two-sided full-D gate (None: not needed)
    costs: dict[str, float]  # modelled ns per pair
    sample_pairs: int


def choose_dims(sample: np.ndarray, rot: Rotation, thr_rel_lo: float, thr_rel_hi: float,
                ladder: Sequence[int] = LADDER) -> DimsChoice:
    """Pick ``d'`` by the cost model on disjoint sample pairs.

    ``thr_rel_lo``/``thr_rel_hi`` are the gate thresholds (band bounds widened by the margin).
    Rates are measured in float64 on the exact bound; the fp32 details only move them by the
    margin, far below the sampling noise. Modelled cost grows with ``d'`` while the rate only
    falls, so the walk up the ladder stops once no larger ``d'`` can be cheaper.
    """
    n, d = sample.shape
    half = min(n // 2, PAIR_SAMPLE)
    dims_ok = [k for k in ladder if k + 1 < d and k <= len(rot.r)]
    if half < 16 or not dims_ok:
        return DimsChoice(None, {}, None, {}, 0)
    a, b = sample[:half], sample[half:2 * half]
    top = dims_ok[-1]
    ya, yb = a @ rot.r[:top].T, b @ rot.r[:top].T
    na2, nb2 = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    ha2, hb2 = np.cumsum(ya * ya, axis=1), np.cumsum(yb * yb, axis=1)
    g = np.zeros((half, half))
    rates: dict[int, float] = {}
    costs: dict[str, float] = {}
    prev = 0
    for k in dims_ok:
        if costs and ns_per_pair(k + 1) >= min(costs.values()):
            break
        g += ya[:, prev:k] @ yb[:, prev:k].T
        prev = k
        ta = np.sqrt(np.maximum(na2 - ha2[:, k - 1], 0.0))
        tb = np.sqrt(np.maximum(nb2 - hb2[:, k - 1], 0.0))
        bound = g + ta[:, None] * tb[None, :]
        rates[k] = float(np.count_nonzero(bound >= thr_rel_lo)) / bound.size
        costs[str(k)] = ns_per_pair(k + 1) + rates[k] * NS_PER_CANDIDATE
    full_rate = None
    if ns_per_pair(d) < min(costs.values()):
        s = a @ b.T
        full_rate = float(np.mean((s >= thr_rel_lo) & (s <= thr_rel_hi)))
        costs["full"] = ns_per_pair(d) + full_rate * NS_PER_CANDIDATE
    best = min(costs, key=lambda c: costs[c])
    return DimsChoice(None if best == "full" else int(best), rates, full_rate, costs,
                      half * half)
