"""vecmirror: keep Redis Query Engine indexes mirrored from PostgreSQL tables, embeddings included."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vecmirror")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
