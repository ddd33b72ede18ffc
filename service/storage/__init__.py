"""Rows in and out of the database in bulk: binary COPY on Postgres, plain statements on SQLite."""
