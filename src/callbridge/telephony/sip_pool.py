"""The supervised pool of pjsua2 media worker processes behind `SipDriver`: starting each
worker over a socket pipe, reading its event batches on a thread, request/reply over the pipe,
and replacing a worker that dies.

Each worker (`sip_worker.py`) owns one Endpoint on `sip_port + index` and its own slice of
the RTP range; its call capacity is what its pjsua2 engine reports (512 with our source build,
4 with the PyPI wheel), lowered by `SIP_WORKER_MAX_CALLS` and by its RTP ports (2 per call).
Protocol messages (`ready`, `fatal`, `reply`) are handled here; call and media events are
handed to the driver on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from callbridge.settings import Settings
from callbridge.telephony.base import DriverError
from callbridge.telephony.sip_protocol import ENGINE_MAX_CALLS, EngineInfo, WorkerConfig

log = logging.getLogger("callbridge.sip")

RESERVED_PER_CALL = 2
"""Slots a call keeps on its worker from admission, so both its legs always fit."""

MessageHandler = Callable[["WorkerHandle", tuple[Any, ...]], None]
"""Takes a worker's call event (`leg`, `gone`, `incoming`, `audio`) on the event loop."""
ExitHandler = Callable[["WorkerHandle"], None]
"""Told on the event loop that a worker died, after its pending requests failed."""


@dataclass(eq=False)
class WorkerHandle:
    index: int
    config: WorkerConfig
    generation: int = 0
    process: subprocess.Popen[bytes] | None = None
    conn: Connection | None = None
    engine: EngineInfo | None = None
    alive: bool = False
    started_at: float = 0.0
    restart_delay_s: float = 0.5
    ready: asyncio.Future[EngineInfo] | None = None
    legs: set[str] = field(default_factory=set)
    groups: dict[str, set[str]] = field(default_factory=dict)
    pending: dict[int, asyncio.Future[str | None]] = field(default_factory=dict)
    sender: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="sip-send")
    )

    @property
    def max_calls(self) -> int:
        """Calls its engine holds, as the worker reported it (0 before it is ready)."""
        return self.engine.max_calls if self.engine is not None else 0

    def free_slots(self) -> int:
        if not self.alive:
            return 0
        reserved = sum(max(RESERVED_PER_CALL, len(legs)) for legs in self.groups.values())
        return self.max_calls - max(reserved, len(self.legs))

    def send(self, message: tuple[Any, ...]) -> None:
        conn = self.conn
        if conn is None:
            raise OSError("worker pipe closed")
        conn.send(message)


class WorkerPool:
    """The worker processes of one `SipDriver`; `start` spawns them, `stop` shuts them down."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int,
        start_timeout_s: float,
        request_timeout_s: float,
        pj_log_level: int,
        on_message: MessageHandler,
        on_exit: ExitHandler,
        worker_python: str | None = None,
    ) -> None:
        self._settings = settings
        self._python = worker_python or sys.executable
        self._worker_count = workers
        self._start_timeout_s = start_timeout_s
        self._request_timeout_s = request_timeout_s
        self._pj_log_level = pj_log_level
        self._on_event = on_message
        self._on_worker_exit = on_exit
        self.workers: list[WorkerHandle] = []
        self.running = False
        self._ids = itertools.count(1)
        self._restarts: set[asyncio.Task[None]] = set()

    def next_id(self) -> int:
        """A fresh id for a request, player or tap (one sequence for all of them)."""
        return next(self._ids)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn every worker and wait until each is ready; on a failure, stop the pool."""
        self.workers = [
            WorkerHandle(index, self._worker_config(index)) for index in range(self._worker_count)
        ]
        self.running = True
        results = await asyncio.gather(
            *(self._spawn(worker) for worker in self.workers), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise DriverError(f"SIP workers failed to start: {failures[0]}")

    async def stop(self) -> None:
        self.running = False
        for task in list(self._restarts):
            task.cancel()
        for worker in self.workers:
            if worker.alive:
                self.post(worker, "shutdown")
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(None, self._reap, worker) for worker in self.workers)
        )
        for worker in self.workers:
            worker.alive = False
            self._fail_pending(worker, "SIP driver stopped")
            worker.sender.shutdown(wait=False)

    def _popen(self, child_fd: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [self._python, "-m", "callbridge.telephony.sip_worker", str(child_fd)],
            pass_fds=(child_fd,),
            stdin=subprocess.DEVNULL,
        )

    def _reap(self, worker: WorkerHandle) -> None:
        process = worker.process
        if process is None:
            return
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            log.warning("sip worker %d did not stop; killing pid=%s", worker.index, process.pid)
            process.kill()
            process.wait(timeout=2.0)
        if worker.conn is not None:
            worker.conn.close()
            worker.conn = None

    def _worker_config(self, index: int) -> WorkerConfig:
        s = self._settings
        span = (s.sip_rtp_port_max - s.sip_rtp_port_min + 1) // self._worker_count
        span -= span % 2
        if span < 8:
            raise DriverError("RTP port range too small for the number of SIP workers")
        password = s.sip_trunk_password.get_secret_value() if s.sip_trunk_password else None
        wanted = min(s.sip_worker_max_calls or ENGINE_MAX_CALLS, span // 2)
        return WorkerConfig(
            index=index,
            bind_host=s.sip_bind_host,
            sip_port=s.sip_port + index,
            rtp_port_min=s.sip_rtp_port_min + index * span,
            rtp_port_count=span,
            tcp=s.sip_trunk_transport == "tcp",
            outbound_proxy=s.sip_outbound_proxy,
            username=s.sip_trunk_username,
            password=password,
            public_address=s.sip_public_address,
            stun_servers=s.stun_servers(),
            requested_max_calls=wanted,
            log_level=s.log_level.upper(),
            pj_log_level=self._pj_log_level,
        )

    async def _spawn(self, worker: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        parent_sock, child_sock = socket.socketpair()
        try:
            process = await loop.run_in_executor(None, self._popen, child_sock.fileno())
        finally:
            child_sock.close()
        parent_conn = Connection(parent_sock.detach())
        try:
            await loop.run_in_executor(worker.sender, parent_conn.send, worker.config)
        except OSError as exc:
            process.kill()
            raise DriverError(f"SIP worker {worker.index} did not take its config") from exc
        worker.generation += 1
        worker.process = process
        worker.conn = parent_conn
        worker.started_at = time.monotonic()
        worker.ready = loop.create_future()
        threading.Thread(
            target=self._read_loop,
            args=(loop, worker, parent_conn, worker.generation, process),
            name=f"sip-read-{worker.index}",
            daemon=True,
        ).start()
        try:
            engine = await asyncio.wait_for(worker.ready, self._start_timeout_s)
        except TimeoutError as exc:
            raise DriverError(f"SIP worker {worker.index} did not become ready") from exc
        worker.engine = engine
        worker.alive = True
        log.info(
            "sip worker %d up pid=%s port=%d engine: %s; open files %d",
            worker.index,
            process.pid,
            worker.config.sip_port,
            engine.describe(),
            engine.open_files,
        )

    def _read_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        worker: WorkerHandle,
        conn: Connection,
        generation: int,
        process: subprocess.Popen[bytes],
    ) -> None:
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                break
            try:
                loop.call_soon_threadsafe(self._on_batch, worker, generation, batch)
            except RuntimeError:
                return
        # The pipe closes as the process ends: reap it so the log shows how it died
        # (e.g. -11 for a segfault, -6 for a pjlib assertion).
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_exit, worker, generation)

    # --- worker messages (event loop) --------------------------------------------------------

    def _on_batch(self, worker: WorkerHandle, generation: int, batch: list[Any]) -> None:
        if generation != worker.generation:
            return
        for message in batch:
            try:
                self._on_message(worker, message)
            except Exception:
                log.exception("sip worker %d message %s failed", worker.index, message[0])

    def _on_message(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "reply":
            _, req_id, error = message
            future = worker.pending.pop(req_id, None)
            if future is not None and not future.done():
                future.set_result(error)
        elif kind == "ready":
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(message[1])
        elif kind == "fatal":
            log.error("sip worker %d failed to start: %s", worker.index, message[1])
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_exception(DriverError(str(message[1])))
        else:
            self._on_event(worker, message)

    def _on_exit(self, worker: WorkerHandle, generation: int) -> None:
        if generation != worker.generation:
            return
        was_alive = worker.alive
        worker.alive = False
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_exception(DriverError(f"SIP worker {worker.index} exited"))
        self._fail_pending(worker, f"SIP worker {worker.index} exited")
        self._on_worker_exit(worker)
        if not (self.running and was_alive):
            return
        process = worker.process
        log.error(
            "sip worker %d died pid=%s exitcode=%s; replacing",
            worker.index,
            process.pid if process else None,
            process.poll() if process else None,
        )
        if time.monotonic() - worker.started_at < 5.0:
            worker.restart_delay_s = min(worker.restart_delay_s * 2, 10.0)
        else:
            worker.restart_delay_s = 0.5
        task = asyncio.get_running_loop().create_task(self._respawn(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _respawn(self, worker: WorkerHandle) -> None:
        await asyncio.sleep(worker.restart_delay_s)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._reap, worker)
        while self.running:
            try:
                await self._spawn(worker)
                return
            except DriverError as exc:
                log.error("sip worker %d restart failed: %s", worker.index, exc)
                await loop.run_in_executor(None, self._reap, worker)
                worker.restart_delay_s = min(worker.restart_delay_s * 2, 10.0)
                await asyncio.sleep(worker.restart_delay_s)

    def _fail_pending(self, worker: WorkerHandle, reason: str) -> None:
        for future in worker.pending.values():
            if not future.done():
                future.set_result(reason)
        worker.pending.clear()

    # --- requests ----------------------------------------------------------------------------

    async def request(self, worker: WorkerHandle, op: str, *args: Any) -> None:
        """Send `op` to a worker and wait for its reply; DriverError if it fails or times out."""
        if not worker.alive:
            raise DriverError(f"SIP worker {worker.index} is not running")
        loop = asyncio.get_running_loop()
        req_id = next(self._ids)
        future: asyncio.Future[str | None] = loop.create_future()
        worker.pending[req_id] = future
        try:
            await loop.run_in_executor(worker.sender, worker.send, (req_id, op, args))
            error = await asyncio.wait_for(future, self._request_timeout_s)
        except (OSError, ValueError) as exc:
            raise DriverError(f"SIP worker {worker.index} unreachable: {exc}") from exc
        except TimeoutError as exc:
            raise DriverError(f"SIP worker {worker.index} did not answer {op}") from exc
        finally:
            worker.pending.pop(req_id, None)
        if error is not None:
            raise DriverError(error)

    def post(self, worker: WorkerHandle, op: str, *args: Any) -> None:
        """Send without waiting for the reply (used from sync `Handle.stop`)."""
        if not worker.alive:
            return

        def send() -> None:
            try:
                worker.send((0, op, args))
            except (OSError, ValueError) as exc:
                log.debug("sip worker %d post %s failed: %s", worker.index, op, exc)

        with contextlib.suppress(RuntimeError):
            worker.sender.submit(send)
