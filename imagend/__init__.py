"""imagend: a Postgres-polled image-generation daemon."""

__version__ = "0.1.0"
