"""The export stage: a pairs store into an SPPS export (Parquet, WebDataset shards).

``export`` writes it, ``verify`` re-reads it; docs/export.md describes the format.
"""

from pairmine.export.fetch import Problem
from pairmine.export.run import FORMATS, ExportFormat, ExportResult, export
from pairmine.export.verification import VerifyResult, verify

__all__ = ["FORMATS", "ExportFormat", "ExportResult", "Problem", "VerifyResult", "export",
           "verify"]
