"""The upserts of the hot path are cached by SQLAlchemy, and `upsert` refuses what the table does
not have. (The statements' effects are tested wherever hosts and counts are: every status-count
test compares the counts with a recount.)"""

from __future__ import annotations

import pytest

from nebula.store import counts, hosts
from nebula.store.models import StatusCount
from nebula.store.upsert import upsert


@pytest.mark.parametrize(
    "statement", [counts._ADD, hosts._UPSERT, hosts._READ_HOST], ids=["counts", "host", "read"]
)
def test_hot_path_statements_are_compiled_once(statement: object) -> None:
    """A statement without a cache key is compiled on every execution (as the dialects'
    insert().on_conflict_do_update() was: a tenth of a grant's time). Catches going back."""
    assert statement._generate_cache_key() is not None  # type: ignore[attr-defined]


def test_upsert_refuses_a_column_the_table_lacks() -> None:
    with pytest.raises(ValueError, match="no column 'cnt'"):
        upsert(StatusCount.__table__, ("group_id", "cnt"), ("group_id",), {"cnt": "1"})


def test_upsert_spells_one_statement_for_both_databases() -> None:
    sql = str(upsert(StatusCount.__table__, ("group_id", "count"), ("group_id",), {"count": "2"}))
    assert sql == (
        "INSERT INTO status_counts (group_id, count) VALUES (:group_id, :count) "
        "ON CONFLICT (group_id) DO UPDATE SET count = 2"
    )
