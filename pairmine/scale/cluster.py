"""Connecting to Ray, and checking that every node can take part before any unit runs.

``auto`` joins a running cluster (``ray start --head`` or a KubeRay head), ``local`` starts
one inside this process, anything else is a head address for ``ray.init``. An address that
does not answer is an error within seconds (a TCP probe before Ray's own, much longer,
retries). Before a run, one probe task per node checks that the node runs the driver's
pairmine version and sees the run's store paths (shared storage is required: workers
memory-map stores, they are never sent arrays).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pairmine.errors import ConfigError, InputError, PairmineError
from pairmine.scale.options import RayOptions, check_reachable

log = logging.getLogger(__name__)

UNIX_SOCKET_MAX = 107  # bytes in a Unix socket path; Ray puts its sockets under _temp_dir
# the longest socket path Ray makes under its temp dir (session_<date>_<pid>/sockets/...)
_SOCKET_TAIL = len("/session_2026-12-01_22-32-39_250897_1234567/sockets/plasma_store")
LOCAL_OBJECT_STORE_BYTES = 256 << 20  # units return small records: paths in, files out


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    host: str
    resources: dict[str, float]


@dataclass
class Cluster:
    """A connection to Ray; closing it disconnects (and stops a cluster it started)."""

    address: str
    nodes: list[NodeInfo] = field(default_factory=list)
    _disconnect: bool = False

    def total(self, resource: str) -> float:
        return sum(n.resources.get(resource, 0.0) for n in self.nodes)

    def close(self) -> None:
        if self._disconnect:
            import ray

            ray.shutdown()
            self._disconnect = False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def short_temp_dir() -> Path:
    """Ray's temp dir, short enough for its Unix sockets (107 bytes) whatever ``$TMPDIR``."""
    base = Path(tempfile.gettempdir())
    if len(str(base)) + 20 + _SOCKET_TAIL > UNIX_SOCKET_MAX:
        base = Path("/tmp")
    return base / f"pm-ray-{os.getuid()}"


def connect(options: RayOptions) -> Cluster:
    """Connect to the cluster ``options.address`` names (see the module doc)."""
    # no usage reports from a library run; the user's own setting wins
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    address = options.address
    if ray.is_initialized():  # a caller (a notebook, a test) already connected: use that
        log.info("using the Ray connection this process already has")
        return Cluster(address=address, nodes=alive_nodes())
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address == "local":
        kwargs.update(_temp_dir=str(short_temp_dir()),
                      object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    elif address != "auto":
        check_reachable(address)
        kwargs["address"] = address
    else:
        kwargs["address"] = "auto"
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise InputError(f"cannot connect to a Ray cluster ({address}): {str(exc)[:200]}",
                         "start one with `ray start --head`, pass its address, or use "
                         "--ray local") from None
    except Exception as exc:  # Ray raises plain Exceptions for failed starts
        raise InputError(f"Ray did not start ({address}): {str(exc)[:300]}",
                         "see docs/scale-out.md, failure modes (socket path length, "
                         "/dev/shm, token auth)") from None
    cluster = Cluster(address=address, nodes=alive_nodes(), _disconnect=True)
    log.info("connected to Ray (%s): %d node(s), %g CPUs, %g GPUs", address,
             len(cluster.nodes), cluster.total("CPU"), cluster.total("GPU"))
    return cluster


def alive_nodes() -> list[NodeInfo]:
    import ray

    return [NodeInfo(node_id=str(n["NodeID"]), host=str(n.get("NodeManagerHostname")
                                                         or n.get("NodeManagerAddress")),
                     resources={k: float(v) for k, v in n.get("Resources", {}).items()})
            for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------------------------
# the per-node check


def probe_node(read: Sequence[str], write: Sequence[str],
               see: Sequence[str] = ()) -> dict[str, Any]:
    """Run on a node: its pairmine version, and the store paths it cannot use."""
    from pairmine import version

    problems = [f"{path} (it does not exist there)" for path in see if not os.path.exists(path)]
    for path in read:
        if not os.access(Path(path) / "manifest.json", os.R_OK):
            problems.append(f"{path} (cannot read its manifest.json)")
    for path in write:
        try:
            fd, probe = tempfile.mkstemp(prefix=".ray-probe.", suffix=".tmp", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problems.append(f"{path} (cannot write there: {exc.strerror or exc})")
    return {"version": version.__version__, "host": socket.gethostname(),
            "problems": problems}


def check_nodes(cluster: Cluster, *, read: Sequence[Path] = (), write: Sequence[Path] = (),
                see: Sequence[Path] = (), resource: str = "CPU") -> None:
    """Refuse to start unless every node that can run units has the driver's pairmine
    version and sees the store paths (``read``: complete stores; ``write``: the output;
    ``see``: other inputs, e.g. an image folder)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pairmine import version

    workers = [n for n in cluster.nodes if n.resources.get(resource, 0) > 0
               or n.resources.get("CPU", 0) > 0]
    if not workers:
        raise InputError(f"the Ray cluster ({cluster.address}) has no node with {resource}s",
                         "add worker nodes, or lower --gpus-per-worker")
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n.node_id, soft=False)).remote([str(p) for p in read], [str(p) for p in write],
                                [str(p) for p in see]): n
        for n in workers}
    try:
        found = ray.get(list(refs), timeout=120)
    except Exception as exc:
        raise PairmineError(f"a Ray node did not answer the pre-run check: {str(exc)[:200]}",
                            "check the cluster with `ray status`") from None
    mine = version.__version__
    for node, got in zip(refs.values(), found, strict=True):
        where = f"node {got['host']} ({node.node_id[:12]})"
        if got["version"] != mine:
            raise ConfigError(f"{where} runs pairmine {got['version']}, the driver {mine}",
                              "install the same pairmine version on every node")
        if got["problems"]:
            raise InputError(f"{where} cannot use the store path {got['problems'][0]}",
                             "every node must see the stores at the same path (shared "
                             "storage); see docs/scale-out.md")


def on_a_worker(options: RayOptions, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on a worker with one unit's resources: what ``auto`` means there (the
    device, the engine) when the driver (a CPU-only head, a login node) has no GPU."""
    import ray

    with connect(options) as _:
        try:
            return ray.get(ray.remote(fn).options(**options.resources(), max_retries=0)
                           .remote(*args), timeout=300)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, PairmineError):
                raise exc.cause from None
            raise


def resolve_embed_device(device: str, precision: str) -> tuple[str, str, str]:
    """Run on a worker: ``(device, precision, device name)`` as embed resolves them."""
    from pairmine.runtime import device_name, resolve_device, resolve_precision

    resolved = resolve_device(device)
    return resolved, resolve_precision(precision, resolved), device_name(resolved)
