"""The Ray options of the ``embed``, ``match`` and ``export`` commands, and their summary.

Only click here: ``pairmine --help`` must not import Ray (the stages import it when asked)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_NAMES = ("ray", "ray_workers", "gpus_per_worker", "cpus_per_worker", "max_retries")


def ray_options(fn: F) -> F:
    """Add ``--ray ADDRESS --ray-workers N --gpus-per-worker F --cpus-per-worker F
    --max-retries K`` to a command; it receives them as one ``scale`` dict of stage
    keyword arguments (empty without ``--ray``: the single-machine path, unchanged)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in _NAMES}
        scale = given if given["ray"] is not None else {}
        return fn(*args, scale=scale, **kwargs)

    options = [
        click.option("--ray", "ray", default=None, metavar="ADDRESS",
                     help="Run the units on Ray: auto (a running cluster), local (start one "
                          "here) or the head's HOST:PORT. The store is byte-identical to one "
                          "written without Ray."),
        click.option("--ray-workers", type=click.IntRange(min=1), default=None, metavar="N",
                     help="With --ray: units at once (default: what the cluster holds)."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0,
                     show_default=True, metavar="F",
                     help="With --ray: GPUs per worker (fractions allowed)."),
        click.option("--cpus-per-worker", type=click.FloatRange(min=0), default=1.0,
                     show_default=True, metavar="F", help="With --ray: CPUs per worker."),
        click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
                     metavar="K", help="With --ray: retries of a unit whose worker died."),
    ]
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def cluster_rows(cluster: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Summary rows for a run on Ray: units run where, retried units, nodes."""
    if not cluster:
        return []
    per_node = ", ".join(f"{host}: {n}" for host, n in cluster["units_per_node"].items())
    retried = cluster["retried_units"]
    rows: list[tuple[str, Any]] = [
        ("ray nodes", cluster["nodes"]),
        ("ray units", f"{cluster['units_run']} run, {cluster['units_resumed']} resumed "
                      f"({per_node or 'none'})"),
        ("ray retried", f"{len(retried)}" + (f" (units {retried[:10]})" if retried else "")),
    ]
    if cluster.get("units_per_gpu"):
        rows.append(("ray GPUs", ", ".join(f"CUDA_VISIBLE_DEVICES={g}: {n}"
                                           for g, n in cluster["units_per_gpu"].items())))
    return rows
