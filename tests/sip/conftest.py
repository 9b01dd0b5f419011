"""Fixtures for the SIP driver tests: SIPp processes killed by PID at teardown, a SipDriver per
test on free 127.0.0.1 ports, and an event recorder with bounded waits."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from callbridge.settings import Settings
from callbridge.telephony.base import LegEvent, LegEventKind
from tests.sip.sipp import Sipp, free_port, sipp_path, start_sipp

_MISSING = [
    name
    for name, present in (
        ("sipp", sipp_path() is not None),
        ("pjsua2", importlib.util.find_spec("pjsua2") is not None),
    )
    if not present
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _MISSING:
        return
    needs_sip = [item for item in items if item.get_closest_marker("sip") is not None]
    if os.environ.get("CALLBRIDGE_REQUIRE_SIP") == "1":
        for item in needs_sip:
            item.add_marker(pytest.mark.usefixtures("_require_sip"))
        return
    skip = pytest.mark.skip(reason=f"missing {', '.join(_MISSING)} (apt sip-tester / .[sip])")
    for item in needs_sip:
        item.add_marker(skip)


@pytest.fixture
def _require_sip() -> None:
    pytest.fail(f"CALLBRIDGE_REQUIRE_SIP=1 but {', '.join(_MISSING)} missing")


class EventLog:
    """Collects leg events; `wait` returns the first matching event or fails after a timeout."""

    def __init__(self) -> None:
        self.events: list[LegEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: LegEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def kinds(self, leg_sid: str) -> list[LegEventKind]:
        return [e.kind for e in self.events if e.leg_sid == leg_sid]

    async def wait(self, leg_sid: str, kind: LegEventKind, timeout_s: float = 10.0) -> LegEvent:
        async with asyncio.timeout(timeout_s):
            while True:
                for event in self.events:
                    if event.leg_sid == leg_sid and event.kind is kind:
                        return event
                self._changed.clear()
                await self._changed.wait()


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll a condition owned by another process (a worker, SIPp) with a bounded wait."""
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met in time")


class Frames:
    """An AudioConsumer keeping each leg's frames."""

    def __init__(self) -> None:
        self.by_leg: dict[str, bytearray] = {}

    def on_audio(self, leg_sid: str, frame: bytes) -> None:
        self.by_leg.setdefault(leg_sid, bytearray()).extend(frame)

    def last(self, leg_sid: str, seconds: float) -> bytes:
        data = self.by_leg.get(leg_sid, bytearray())
        return bytes(data[-int(16000 * seconds) :])

    def clear(self) -> None:
        self.by_leg.clear()


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Callable[..., Sipp]]:
    started: list[Sipp] = []

    def factory(scenario: str, **kwargs: Any) -> Sipp:
        process = start_sipp(scenario, tmp_path / f"sipp{len(started)}", **kwargs)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.stop()


def sip_settings(workers: int = 2, **overrides: Any) -> Settings:
    rtp_min = free_port(20 * workers, step=2)
    base = free_port(workers)
    while rtp_min - workers - 2 <= base <= rtp_min + 40 * workers + 2:
        base = free_port(workers)
    values: dict[str, Any] = {
        "sip_bind_host": "127.0.0.1",
        "sip_port": base,
        "sip_rtp_port_min": rtp_min,
        "sip_rtp_port_max": rtp_min + 40 * workers - 1,
        "sip_workers": workers,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


def wheel_python() -> str | None:
    """The interpreter of the venv `scripts/build_pjsua2.py --wheel-venv` made: SIP workers
    run there on the PyPI wheel (4 calls per process) instead of our source build."""
    python = Path(sys.prefix) / "pjsua2-wheel" / "bin" / "python"
    return str(python) if python.exists() else None


@pytest.fixture(params=["source", "wheel"])
def engine(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Runs a test on both engines: the venv's (our source build, capped at the wheel's 4 calls
    per worker by `sip_worker_max_calls`) and the PyPI wheel itself in its own venv. Returns
    the keyword arguments for `make_driver` / `sip_app`."""
    if request.param == "source":
        return {"sip_worker_max_calls": 4}
    return {"worker_python": wheel_python_or_skip()}


def require(what: str, present: bool) -> None:
    """Skips the test when `what` is missing, or fails it under CALLBRIDGE_REQUIRE_SIP=1 (CI)."""
    if present:
        return
    if os.environ.get("CALLBRIDGE_REQUIRE_SIP") == "1":
        pytest.fail(f"CALLBRIDGE_REQUIRE_SIP=1 but {what} is missing")
    pytest.skip(f"needs {what}")


def wheel_python_or_skip() -> str:
    python = wheel_python()
    require("the wheel venv (`make pjsua2`, or build_pjsua2.py --wheel-venv)", python is not None)
    assert python is not None
    return python


@pytest.fixture
async def make_driver(events: EventLog) -> AsyncIterator[Callable[..., Any]]:
    from callbridge.telephony.sip import SipDriver

    drivers: list[SipDriver] = []

    async def factory(
        workers: int = 2, worker_python: str | None = None, **overrides: Any
    ) -> SipDriver:
        driver = SipDriver(sip_settings(workers, **overrides), worker_python=worker_python)
        await driver.start(events)
        drivers.append(driver)
        return driver

    yield factory
    for driver in drivers:
        await asyncio.wait_for(driver.stop(), 15)
