"""Group commit: one writer task applies many calls' admissions and state changes per transaction.

Every write a call makes goes through here. Queued jobs are taken together, grouped by kind
and applied with a handful of multi-row statements in one transaction, so the cost of a
commit (and on SQLite, of crossing to the database thread) is shared by the whole batch.
If a batch fails, its jobs are retried one per transaction so one bad job fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.store.repo import Store

log = logging.getLogger(__name__)

J = TypeVar("J")

BatchApply = Callable[[AsyncConnection, Sequence[Any]], Awaitable[list[Any]]]
"""Applies a list of jobs of one kind; returns one result (or exception instance) per job."""


@dataclass(slots=True)
class _Pending(Generic[J]):
    kind: str
    job: J
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class BatchWriter:
    """Serialises writes through one task and batches them into shared transactions."""

    def __init__(self, store: Store, *, max_batch: int = 1024) -> None:
        self._store = store
        self._max_batch = max_batch
        self._kinds: dict[str, BatchApply] = {}
        self._order: list[str] = []
        self._queue: list[_Pending[Any]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.jobs = 0

    def register(self, kind: str, apply: BatchApply) -> None:
        """Kinds are applied in registration order within a batch."""
        self._kinds[kind] = apply
        self._order.append(kind)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="batch-writer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        while self._queue:
            await self._drain_once()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def submit(self, kind: str, job: Any) -> Any:
        """Queue a job and wait until its transaction committed; returns its result or raises."""
        if self._task is None:
            results = await self._apply_alone(kind, job)
            return _unwrap(results)
        pending: _Pending[Any] = _Pending(kind, job)
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._drain_once()

    async def _drain_once(self) -> None:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        by_kind: dict[str, list[_Pending[Any]]] = {}
        for item in batch:
            by_kind.setdefault(item.kind, []).append(item)
        try:
            results: dict[int, Any] = {}
            async with self._store.tx() as conn:
                for kind in self._order:
                    items = by_kind.get(kind)
                    if not items:
                        continue
                    outcome = await self._kinds[kind](conn, [i.job for i in items])
                    for item, result in zip(items, outcome, strict=True):
                        results[id(item)] = result
            self.batches += 1
            self.jobs += len(batch)
            for item in batch:
                _resolve(item.future, results[id(item)])
        except Exception:
            if len(batch) == 1:
                log.exception("write failed", extra={"kind": batch[0].kind})
                _fail(batch[0].future)
                return
            log.warning("batch write failed; retrying jobs one by one", exc_info=True)
            for item in batch:
                try:
                    _resolve(item.future, _unwrap(await self._apply_alone(item.kind, item.job)))
                except Exception as exc:
                    if not item.future.done():
                        item.future.set_exception(exc)

    async def _apply_alone(self, kind: str, job: Any) -> list[Any]:
        async with self._store.tx() as conn:
            results = await self._kinds[kind](conn, [job])
            if results and isinstance(results[0], BaseException) and _rollback(results[0]):
                raise results[0]
            return results


def _rollback(result: BaseException) -> bool:
    """A job-level error that must not commit anything (all of them, today)."""
    return True


def _unwrap(results: list[Any]) -> Any:
    result = results[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _fail(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(RuntimeError("write failed"))
