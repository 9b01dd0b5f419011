"""A SIP media worker process: `python -m callbridge.telephony.sip_worker FD`. It owns one
pjsua2 Endpoint on its own SIP port and RTP range (`sip_worker_calls.Worker`), runs the jobs
the `SipDriver` sends over a socket pipe and reports events back (`sip_protocol.py`).

Three threads: the process's main thread is the pj thread (the only one calling pjlib); a
reader thread turns pipe messages into jobs; a sender thread batches events onto the pipe.
The conference clock (a pjmedia thread) hands stream audio to the sender's queue, and the
recording encoder thread hands it MP3.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from callbridge.telephony.sip_protocol import WorkerConfig, open_files_needed

log = logging.getLogger("callbridge.sip.worker")

Event = tuple[Any, ...]
_BATCH = 512
_MEDIA = frozenset({"audio", "rec_data"})
_MEDIA_LINGER_S = 0.02


def main(argv: list[str] | None = None) -> None:
    """FD is this end of a socketpair whose first message is the WorkerConfig. A fresh
    interpreter, so nothing of the API process (its `__main__`, threads, event loop) is
    inherited."""
    args = sys.argv[1:] if argv is None else argv
    conn = Connection(int(args[0]))
    config = conn.recv()
    if not isinstance(config, WorkerConfig):
        raise SystemExit("sip worker: bad configuration message")
    worker_main(config, conn)


def worker_main(config: WorkerConfig, conn: Connection) -> None:
    """Run the worker until told to stop or the parent goes away; never returns."""
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s %(levelname)s sip-worker[{config.index}] %(message)s",
    )
    gc.disable()
    out: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_loop, args=(conn, out), daemon=True)
    sender.start()
    threading.Thread(target=_read_loop, args=(conn, jobs), daemon=True).start()
    code = 0
    try:
        # Imported here so that a missing or broken pjsua2 is reported as `fatal`, not a crash.
        from callbridge.telephony.sip_endpoint import raise_open_files
        from callbridge.telephony.sip_worker_calls import Worker

        files = raise_open_files(open_files_needed(config.requested_max_calls))
        worker = Worker(config, out, jobs, files)
    except Exception as exc:
        log.exception("worker setup failed")
        out.put(("fatal", f"{type(exc).__name__}: {exc}"))
        code = 3
    else:
        try:
            worker.run()
        except Exception:
            log.exception("worker loop failed")
            code = 4
    out.put(None)
    sender.join(timeout=2.0)
    # Every pjsua2 object is gone by now; skip interpreter teardown (and its atexit hooks).
    os._exit(code)


def _read_loop(conn: Connection, jobs: queue.SimpleQueue[Any]) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            jobs.put((0, "shutdown", ()))
            return
        jobs.put(message)


def _send_loop(conn: Connection, out: queue.SimpleQueue[Event | None]) -> None:
    """Send events in batches. A batch of media only (stream frames, MP3 pieces) waits up to
    `_MEDIA_LINGER_S` for more, so the API process wakes ~50 times a second per worker instead
    of once per frame; any other event goes out at once, with whatever is queued."""
    while True:
        item = out.get()
        if item is None:
            return
        batch = [item]
        deadline = time.monotonic() + _MEDIA_LINGER_S
        media_only = item[0] in _MEDIA
        while len(batch) < _BATCH:
            try:
                if media_only:
                    nxt = out.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    nxt = out.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                _safe_send(conn, batch)
                return
            batch.append(nxt)
            media_only = media_only and nxt[0] in _MEDIA
        if not _safe_send(conn, batch):
            return


def _safe_send(conn: Connection, batch: list[Event]) -> bool:
    try:
        conn.send(batch)
    except (OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    # Run the imported module, not this `__main__` copy, so pickled types and globals match.
    from callbridge.telephony.sip_worker import main as _main

    _main()
