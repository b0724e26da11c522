"""Scale-out on Ray: the heavy stages (embed, match, export) across a cluster.

The units are the single-machine units (an embed shard, a match block, an export shard),
planned by the stage exactly as without Ray and run through the same unit functions, so a
cluster writes the same bytes as one machine and either can resume the other. The driver
holds the store's lock and writes the manifest last; workers get paths, never arrays.

- ``options``: the user's Ray options (address, workers, resources, retries), checked;
- ``cluster``: connecting (``auto``, ``local``, an address) and checking every node
  (pairmine version, store paths visible);
- ``units``: the driver loop shared by the distributors (bounded in-flight work, progress,
  the report of which node ran what and what was retried);
- ``embed``, ``match``, ``export``: one distributor per stage.

``ray`` is imported only inside functions: importing this package stays cheap.
"""

from pairmine.scale.options import RayOptions

__all__ = ["RayOptions"]
