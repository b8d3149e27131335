"""The grant gate: a PostgreSQL function that locks a group's row and counts what its limits
need, each count with a snapshot taken after the lock.

A host's first check-in is written in one statement on PostgreSQL (nebula.store.firstcheck),
run in autocommit, so that the group's lock is held for that statement alone and not across
round trips to the client. Inside one statement, though, every query sees the snapshot taken
when the statement started: counts read in the same statement after waiting for the lock would
miss the grants committed meanwhile. A VOLATILE function takes a new snapshot for each query it
runs (READ COMMITTED), so the counts read in it, after its lock, are exact. What counts as in
flight (the statuses, the update timeout's cutoff) is passed in by the caller; the function
only locks, checks the catalog stamp, and counts up to each limit. Nothing on SQLite, where
every writing transaction holds the database lock.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

GATE = """
CREATE OR REPLACE FUNCTION nebula_grant_gate(
    p_group text,
    p_stamp bigint,
    p_lock text,
    p_since timestamptz,
    p_max_grants integer,
    p_max_concurrent integer,
    p_working text[],
    p_cutoff timestamptz,
    p_installed boolean,
    p_safe_target text,
    p_in_progress text[],
    p_exclude text,
    OUT fresh boolean,
    OUT grants integer,
    OUT in_flight integer,
    OUT target_completed integer,
    OUT target_in_flight integer
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    grants := 0;
    in_flight := 0;
    target_completed := 0;
    target_in_flight := 0;
    IF p_lock = 'none' THEN
        fresh := true;
        RETURN;
    ELSIF p_lock = 'share' THEN
        PERFORM 1 FROM groups WHERE id = p_group FOR SHARE;
    ELSIF p_lock = 'exclusive' THEN
        PERFORM 1 FROM groups WHERE id = p_group FOR NO KEY UPDATE;
    ELSE
        -- 'skip': the host has state already; the caller writes nothing and locks nothing.
        fresh := false;
        RETURN;
    END IF;
    -- Every change of a group's policy bumps the stamp in its transaction: the caller decided
    -- on the catalog of this stamp, so an equal stamp read under the lock means the same policy.
    fresh := (SELECT stamp FROM config_stamp WHERE id = 1) = p_stamp;
    IF NOT fresh OR p_lock <> 'exclusive' THEN
        RETURN;
    END IF;
    IF p_max_grants IS NOT NULL THEN
        SELECT count(*) INTO grants FROM (
            SELECT 1 FROM grants
            WHERE group_id = p_group AND granted_at > p_since
            LIMIT p_max_grants
        ) AS s;
    END IF;
    IF p_max_concurrent IS NOT NULL THEN
        SELECT count(*) INTO in_flight FROM (
            SELECT 1 FROM instance_apps
            WHERE group_id = p_group AND instance_id <> p_exclude AND retired_at IS NULL
              AND ((status = ANY (p_working) AND (p_cutoff IS NULL OR granted_at > p_cutoff))
                   OR (p_installed AND status = 'installed'))
            LIMIT p_max_concurrent
        ) AS s;
    END IF;
    IF p_safe_target IS NOT NULL THEN
        SELECT count(*) INTO target_completed FROM (
            SELECT 1 FROM completions WHERE group_id = p_group AND version = p_safe_target
            LIMIT 1
        ) AS s;
        SELECT count(*) INTO target_in_flight FROM (
            SELECT 1 FROM instance_apps
            WHERE group_id = p_group AND instance_id <> p_exclude AND retired_at IS NULL
              AND granted_version = p_safe_target AND status = ANY (p_in_progress)
            LIMIT 1
        ) AS s;
    END IF;
END
$$
"""

DROP = (
    "DROP FUNCTION IF EXISTS nebula_grant_gate(text, bigint, text, timestamptz, integer, "
    "integer, text[], timestamptz, boolean, text, text[], text)"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(GATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP)
