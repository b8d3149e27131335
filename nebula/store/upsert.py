"""INSERT ... ON CONFLICT DO UPDATE statements that SQLAlchemy compiles once.

SQLAlchemy gives the dialect-specific `insert()` constructs of PostgreSQL and SQLite no cache
key (2.0), so an upsert built with them is compiled again on every execution, even when the
statement object is reused: on the grant path that was a tenth of the time. The same upsert as
a `text()` clause is cached like any other statement, and both databases accept one spelling
(SQLite has had ON CONFLICT since 3.24). Parameters are typed from the table's columns, so
datetimes and the like are bound exactly as the ORM binds them. Imports nothing of Nebula.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import FromClause, Table, TextClause, bindparam, text


def upsert(
    table: FromClause,
    columns: Sequence[str],
    conflict: Sequence[str],
    updates: Mapping[str, str],
) -> TextClause:
    """INSERT INTO table (columns) VALUES (:column, ...) ON CONFLICT (conflict) DO UPDATE SET
    name = expression, for each of `updates`. An expression may name `excluded.<column>` (the
    row offered) and `<table>.<column>` (the stored row); every column is bound as :column."""
    if not isinstance(table, Table):
        raise TypeError(f"upsert needs a table, not {table!r}")
    for name in (*columns, *conflict, *updates):
        if name not in table.c:
            raise ValueError(f"{table.name} has no column {name!r}")
    sets = ", ".join(f"{name} = {expression}" for name, expression in updates.items())
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {sets}"
    )
    return text(sql).bindparams(*(bindparam(c, type_=table.c[c].type) for c in columns))
