"""Alembic migration scripts (applied by `callctl migrate` and `callctl serve`)."""
