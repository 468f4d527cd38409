"""Alembic revisions of the density-db schema (installed as ``density_db.migrations``)."""
