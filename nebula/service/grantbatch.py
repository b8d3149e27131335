"""Grants of one group written together, "group commit" style: while a statement of the group
is in flight, the next grants of that group queue; when it is done, all that queued go in one
statement (nebula.store.firstbatch for new hosts, knownbatch for known ones) and one commit. No
sleep: a lone request is written at once, alone; batches form only when requests arrive faster
than the group's statements can be written, which is when one lock (counted grants) or one
statement and commit (all grants) per grant would bound them.

One batcher per process. Exactness does not depend on it: the statement takes the group's lock
and counts under it as one host's statement does, so processes (and replicas) writing batches
of the same group take turns on that lock as single statements do.

A batch the database rolled back whole (a deadlock's victim, a lost connection) is run once
more, as one host's statement is (a second run writes nothing for a host the first committed:
it finds it stored). A batch that fails again, or with any other error, is split: each host's
plan is written alone, so that each request gets what it would have got without the batch,
its answer or its error, and one request's failure is not every request's. Imports nothing of
Nebula: the statements and how plans are grouped are handed in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

MAX_BATCH = 64  # hosts per statement: more waits its turn (bounds the statement's size)


class Plan(Protocol):
    @property
    def machine_id(self) -> str: ...


P = TypeVar("P", bound=Plan)
R = TypeVar("R")


@dataclass(slots=True)
class _Queue(Generic[P, R]):
    waiting: list[tuple[P, asyncio.Future[R]]] = field(default_factory=list)
    running: bool = False


class GrantBatcher(Generic[P, R]):
    """Collects the grants of each group (plans with the same `key`) and writes them in
    batches, one statement of a group in flight at a time in this process.

    `write_many` runs the batch statement (with its own retry of a rolled-back batch);
    `write_one` one host's statement, for a lone plan and for a batch that failed."""

    def __init__(
        self,
        key: Callable[[P], Hashable],
        write_many: Callable[[Sequence[P]], Awaitable[list[R]]],
        write_one: Callable[[P], Awaitable[R]],
    ) -> None:
        self._key = key
        self._write_many = write_many
        self._write_one = write_one
        self._queues: dict[Hashable, _Queue[P, R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def write(self, plan: P) -> R:
        """What `plan`'s statement wrote, alone or in a batch."""
        key = self._key(plan)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue.waiting.append((plan, future))
        if not queue.running:
            queue.running = True
            # A task of its own: a request that goes away does not cancel the others' batch.
            task = asyncio.create_task(self._drain(key, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # shield: the request may be cancelled; its grant, once in a batch, is written anyway
        # (as one host's statement would be, once sent).
        return await asyncio.shield(future)

    async def _drain(self, key: Hashable, queue: _Queue[P, R]) -> None:
        try:
            while queue.waiting:
                batch = _take(queue)
                try:
                    await self._run(batch)
                except BaseException as exc:  # cancelled (shutdown): no request waits forever
                    for _, future in [*batch, *queue.waiting]:
                        if future.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            future.cancel()
                        else:
                            future.set_exception(exc)
                    queue.waiting.clear()
                    raise
        finally:
            queue.running = False
            if not queue.waiting and self._queues.get(key) is queue:
                del self._queues[key]

    async def _run(self, batch: list[tuple[P, asyncio.Future[R]]]) -> None:
        plans = [plan for plan, _ in batch]
        try:
            results = await self._write_many(plans) if len(plans) > 1 else None
            if results is not None and len(results) != len(plans):
                raise AssertionError(f"{len(plans)} plans, {len(results)} results")
        except Exception as exc:  # split it: each request gets its own answer or error
            log.warning(
                "a batch of %d counted grants failed (%s); writing each alone", len(plans), exc
            )
            results = None
        if results is not None:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
            return
        for plan, future in batch:
            try:
                result = await self._write_one(plan)
            except BaseException as exc:
                if not future.done():
                    future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                if not future.done():
                    future.set_result(result)

    def queued(self) -> int:
        """How many plans wait for a statement of their group (not yet sent)."""
        return sum(len(queue.waiting) for queue in self._queues.values())

    async def close(self) -> None:
        """Wait for the batches in flight (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _take(queue: _Queue[P, R]) -> list[tuple[P, asyncio.Future[R]]]:
    """The next batch: up to MAX_BATCH plans in arrival order, each host once (a host asking
    twice at once waits for the next batch, as its second request would wait alone)."""
    batch: list[tuple[P, asyncio.Future[R]]] = []
    rest: list[tuple[P, asyncio.Future[R]]] = []
    hosts: set[str] = set()
    for item in queue.waiting:
        plan, future = item
        if future.cancelled():
            continue
        if len(batch) < MAX_BATCH and plan.machine_id not in hosts:
            hosts.add(plan.machine_id)
            batch.append(item)
        else:
            rest.append(item)
    queue.waiting[:] = rest
    return batch
