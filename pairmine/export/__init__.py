"""The export stage: a pairs store into an SPPS export (Parquet, WebDataset shards).

``export`` writes it as its ``ExportConfig`` says, ``verify`` re-reads it; docs/export.md
describes the format.
"""

from pairmine.export.config import ExportConfig
from pairmine.export.fetch import describe_problems
from pairmine.export.formats import EXPORT_FORMATS, ExportFormat
from pairmine.export.run import ExportResult, export
from pairmine.export.verification import VerifyResult, verify
from pairmine.stores.export import Problem

__all__ = ["EXPORT_FORMATS", "ExportConfig", "ExportFormat", "ExportResult", "Problem",
           "VerifyResult", "describe_problems", "export", "verify"]
