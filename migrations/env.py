"""Alembic environment: runs migrations on a connection handed in by nebula.store.migrate.

Nebula migrates from inside its own event loop (`nebula serve`, `nebula db upgrade`, the tests),
so this file never creates an engine of its own: nebula.store.migrate opens an async connection,
and passes its synchronous face as `config.attributes["connection"]`. SQLite needs batch mode for
ALTER TABLE, hence render_as_batch.
"""

from __future__ import annotations

from alembic import context

from nebula.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `nebula db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
