"""The Ray options a user gives a stage (``--ray ADDRESS --ray-workers N ...``), checked."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass

from pairmine.config import StageConfig, check_int, check_number, setting
from pairmine.errors import ConfigError, InputError

DEFAULT_MAX_RETRIES = 3  # Ray's own default for tasks
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RayOptions:
    """``address``: ``auto`` (join a running cluster), ``local`` (start one in this process) or
    a cluster address for ``ray.init``. ``workers``: units running at once (None: as many as the
    cluster's resources allow). Each unit asks for ``gpus_per_worker`` GPUs (fractions allowed)
    and ``cpus_per_worker`` CPUs; a unit whose worker dies is retried ``max_retries`` times."""

    address: str
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_retries: int = DEFAULT_MAX_RETRIES

    def checked(self) -> RayOptions:
        if not isinstance(self.address, str) or not self.address.strip():
            raise ConfigError("--ray needs an address", "auto, local, or HOST:PORT of the head")
        if self.workers is not None and (isinstance(self.workers, bool)
                                         or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ConfigError(f"--ray-workers {self.workers!r} is not an integer >= 1")
        for name, value in (("--gpus-per-worker", self.gpus_per_worker),
                            ("--cpus-per-worker", self.cpus_per_worker)):
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} {value!r} is not a number >= 0",
                                  "fractions are allowed, e.g. --gpus-per-worker 0.5")
        if self.gpus_per_worker == 0 and self.cpus_per_worker == 0:
            raise ConfigError("--gpus-per-worker and --cpus-per-worker are both 0",
                              "a unit needs some resource, e.g. --cpus-per-worker 1")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise ConfigError(f"--max-retries {self.max_retries!r} is not an integer >= 0")
        if self.address.strip() not in ("auto", "local"):
            check_reachable(self.address.strip())  # before the stage touches its output
        return RayOptions(self.address.strip(), self.workers, float(self.gpus_per_worker),
                          float(self.cpus_per_worker), self.max_retries)

    def resources(self) -> dict[str, float]:
        """The Ray resource request of one unit."""
        return {"num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker}


@dataclass(frozen=True, kw_only=True)
class ScaleSettings(StageConfig):
    """The Ray fields every scalable stage config has (embed, match, export): without ``ray``
    the stage runs in this process, unchanged. Checked (and the head's address tried) by
    :meth:`ray_options` when the stage starts, not when the config is built."""

    ray: str | None = setting(
        None, metavar="ADDRESS",
        help="Run the units on Ray: auto (a running cluster), local (start one here) or the "
             "head's HOST:PORT. The store is byte-identical to one written without Ray.")
    ray_workers: int | None = setting(
        None, metavar="N", minimum=1,
        help="With --ray: units at once (default: what the cluster holds).")
    gpus_per_worker: float = setting(
        0.0, metavar="F", minimum=0, help="With --ray: GPUs per worker (fractions allowed).")
    cpus_per_worker: float = setting(1.0, metavar="F", minimum=0,
                                     help="With --ray: CPUs per worker.")
    max_retries: int = setting(DEFAULT_MAX_RETRIES, metavar="K", minimum=0,
                               help="With --ray: retries of a unit whose worker died.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("--ray-workers", self.ray_workers, minimum=1, optional=True)
        check_number("--gpus-per-worker", self.gpus_per_worker, minimum=0)
        check_number("--cpus-per-worker", self.cpus_per_worker, minimum=0)
        check_int("--max-retries", self.max_retries, minimum=0)
        if self.ray is not None and self.gpus_per_worker == 0 and self.cpus_per_worker == 0:
            # here, not only when Ray starts: options that contradict are refused at once
            raise ConfigError("--gpus-per-worker and --cpus-per-worker are both 0",
                              "a unit needs some resource, e.g. --cpus-per-worker 1")

    def ray_options(self) -> RayOptions | None:
        """The checked :class:`RayOptions`, or None to run without Ray."""
        if self.ray is None:
            return None
        return RayOptions(address=self.ray, workers=self.ray_workers,
                          gpus_per_worker=self.gpus_per_worker,
                          cpus_per_worker=self.cpus_per_worker,
                          max_retries=self.max_retries).checked()


def check_reachable(address: str) -> None:
    """A TCP connect to the head with a short timeout: Ray itself retries for a minute."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address!r} is not auto, local or HOST:PORT",
                          "e.g. --ray 10.0.0.1:6379 (the address `ray start --head` printed)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise InputError(f"cannot reach the Ray cluster at {address}: {reason}",
                         "check the address and that `ray start --head` runs there") from None
