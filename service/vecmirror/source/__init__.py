"""Postgres side: migrations, change capture, claiming changes, loading rows, listening."""
