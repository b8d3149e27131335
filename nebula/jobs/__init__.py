"""Background jobs: the timeout sweeper, retirement of silent hosts, retention, history, and the
leadership that makes them run once per deployment (nebula.jobs.leader). Imports nebula.store,
never web or CLI code."""
