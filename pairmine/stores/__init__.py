"""The stores: the contract between stages. Stages import this package, never each other.

Every store is a directory whose ``manifest.json`` is written last, by atomic rename: a store
without it is incomplete. Every shard is written under a temporary name and renamed when
complete, so an interrupted run resumes by skipping finished shards. One module per concern:

- ``atomic``: atomic writes, the temporary-name pattern, write errors as one clear message;
- ``lock``: one writer per store (an ``flock`` the kernel releases when the process dies);
- ``run``: a run's life (``begin_run`` → shards → ``Run.finish``), manifests, damage reports;
- ``embeddings``, ``pairs``, ``export``: each store's layout constants, typed manifest and
  reader.
"""

from pairmine.stores.atomic import (
    TEMPORARY_NAME,
    append_line,
    atomic_path,
    check_writable,
    remove_temporaries,
    save_npy_atomic,
    sha256_file,
    write_bytes_atomic,
    write_failure,
    write_json_atomic,
    write_parquet_atomic,
    writing,
)
from pairmine.stores.embeddings import (
    CODES_DIR,
    EMB_DIR,
    EMBEDDINGS_FORMAT,
    ERRORS_FILE,
    ERRORS_SCHEMA,
    META_DIR,
    META_SCHEMA,
    Embeddings,
    EmbeddingShard,
    EmbeddingsManifest,
    RowView,
    content_code,
    content_code_array,
    content_codes,
    embedding_shard_files,
    embedding_shards,
    open_embeddings,
    read_codes,
    read_meta,
    read_vectors,
    write_embedding_shard,
)
from pairmine.stores.export import (
    EXPORT_FORMAT,
    IMAGES_FILE,
    IMAGES_SCHEMA,
    INDEX_SCHEMA,
    SPPS_FILE,
    SPPS_SCHEMA,
    Export,
    ExportManifest,
    ExportShard,
    ShardIndex,
    open_export,
)
from pairmine.stores.lock import LOCK_FILE, StoreLock
from pairmine.stores.pairs import (
    DUPLICATES_FILE,
    PAIRS_DIR,
    PAIRS_FORMAT,
    PAIRS_SCHEMA,
    SUBSET_FILE,
    Pairs,
    PairsManifest,
    SubsetRecord,
    check_seed,
    draw_subset,
    open_pairs,
    open_pairs_embeddings,
    parse_subset,
    subset_size,
)
from pairmine.stores.run import (
    FINISHING_DIR,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    MANIFEST,
    PARTIAL_DIR,
    RUN_FILE,
    Run,
    begin_run,
    damaged,
    finish_store,
    format_version,
    input_record,
    is_unfinished,
    pairmine_version,
    read_json,
    read_manifest,
    shard_name,
)

__all__ = [
    "DUPLICATES_FILE", "EMBEDDINGS_FORMAT", "EMB_DIR", "ERRORS_FILE", "ERRORS_SCHEMA",
    "EXPORT_FORMAT", "FINISHING_DIR", "FORMAT_VERSION", "LOCK_FILE", "MANIFEST", "META_DIR",
    "META_SCHEMA", "PAIRS_DIR", "PAIRS_FORMAT", "PAIRS_SCHEMA", "PARTIAL_DIR", "RUN_FILE",
    "SUBSET_FILE", "TEMPORARY_NAME", "EmbeddingShard", "Embeddings", "EmbeddingsManifest",
    "Pairs", "PairsManifest", "Run", "StoreLock", "SubsetRecord", "append_line", "atomic_path",
    "begin_run", "check_seed", "check_writable", "content_codes", "damaged", "draw_subset",
    "embedding_shards", "finish_store", "input_record", "is_unfinished", "open_embeddings",
    "open_pairs",
    "open_pairs_embeddings", "pairmine_version", "parse_subset", "read_json", "read_manifest",
    "read_meta", "read_vectors", "remove_temporaries", "save_npy_atomic", "sha256_file",
    "shard_name", "subset_size", "write_bytes_atomic", "write_failure", "write_json_atomic",
    "write_parquet_atomic", "writing",
]
# the lazy embeddings store: rows by range, metadata and content codes per shard
__all__ += [
    "CODES_DIR", "FORMAT_VERSIONS", "RowView", "content_code", "content_code_array",
    "embedding_shard_files", "format_version", "read_codes", "write_embedding_shard",
]
# the export store
__all__ += [
    "IMAGES_FILE", "IMAGES_SCHEMA", "INDEX_SCHEMA", "SPPS_FILE", "SPPS_SCHEMA", "Export",
    "ExportManifest", "ExportShard", "ShardIndex", "open_export",
]
