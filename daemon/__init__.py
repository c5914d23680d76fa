"""imgtrain: the photo-ingest daemon."""

__version__ = "0.1.0"
