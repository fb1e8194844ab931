"""Image sources: each lists candidate URLs with metadata; the fetcher does the downloading."""

from pipelines.sources.base import Candidate, Source, SourceContext, SourceUnavailable
from pipelines.sources.config import CLASSES, SourcesFile, load_sources_file

__all__ = ["CLASSES", "Candidate", "Source", "SourceContext", "SourceUnavailable", "SourcesFile", "load_sources_file"]
