"""Image sources: where ``embed`` reads images from. A registry of kinds, one contract."""

from pairmine.sources.base import (
    SOURCES,
    ImageSource,
    RefReader,
    SourceKind,
    open_source,
    read_ref,
    ref_reader,
    register_source,
)

__all__ = ["SOURCES", "ImageSource", "RefReader", "SourceKind", "open_source", "read_ref",
           "ref_reader", "register_source"]
