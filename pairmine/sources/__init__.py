"""Image sources: where ``embed`` reads images from. A registry of kinds, one contract."""

from pairmine.sources.base import SOURCES, ImageSource, open_source, register_source

__all__ = ["SOURCES", "ImageSource", "open_source", "register_source"]
