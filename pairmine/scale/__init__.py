"""Scale-out: a stage's units here or on Ray, through one distributor that knows no stage.

The units are the single-machine units (an embed shard, a match tile, an export shard),
planned by the stage exactly as without Ray and run through the same unit functions, so a
cluster writes the same bytes as one machine and either can resume the other. The driver
holds the store's lock and writes the manifest last; workers get paths, never arrays.

- ``options``: the user's Ray options (address, workers, resources, retries), checked;
- ``cluster``: connecting (``auto``, ``local``, an address) and checking every node
  (pairmine version, store paths visible);
- ``executor``: :func:`~pairmine.scale.executor.execute`, img2dataset's distributor pattern:
  a stage hands it a picklable unit function (or a unit class, built once per worker), a
  small payload and its units; it runs them here in order or as Ray tasks/actors (bounded
  in-flight work, threads sized to the CPUs Ray gave, retries, the fault hook, a one-line
  out-of-memory diagnosis) and reports where they ran. It imports no stage
  (``.importlinter``).

``ray`` is imported only inside functions: importing this package stays cheap.
"""

from pairmine.scale.options import RayOptions

__all__ = ["RayOptions"]
