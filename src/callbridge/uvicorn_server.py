"""uvicorn's Server, ending with exit status 0 when a signal (Ctrl-C, SIGTERM) stopped it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn raises the signal again once it has stopped, so Ctrl-C would end in a
            # KeyboardInterrupt traceback and SIGTERM in "Terminated" (`make run` reports both
            # as failures). A stop that was asked for and completed is a clean exit.
            self._captured_signals.clear()
