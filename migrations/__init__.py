"""Alembic migrations of Nebula. Shipped inside the package as nebula._migrations."""
