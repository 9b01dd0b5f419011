"""The SIP worker pool's capacity on both engines: the calls each worker really gets (our source
build: 512; the PyPI wheel: 4; lowered by the RTP range or `SIP_WORKER_MAX_CALLS`), the engine
named at start, the open-files limit a worker raises, slots reserved per call and released, and
one crashed worker ending only its own calls."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from callbridge.telephony.base import CapacityExhausted, DialRequest, LegEventKind
from callbridge.telephony.sip_protocol import open_files_needed
from tests.sip.conftest import EventLog, until, wheel_python_or_skip
from tests.sip.sipp import Sipp, free_port

pytestmark = pytest.mark.sip

EXOPHONE = "+912241499102"


def dial(leg: str, call: str, contact: str, ring_s: float = 10.0) -> DialRequest:
    return DialRequest(leg, call, "acme", contact, EXOPHONE, ring_s)


def wide_rtp(workers: int, calls_per_worker: int) -> dict[str, Any]:
    """An RTP range with 2 ports per call for every worker."""
    ports = 2 * calls_per_worker * workers
    base = free_port(ports // 2, step=2)
    return {"sip_rtp_port_min": base, "sip_rtp_port_max": base + ports - 1}


def soft_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


async def test_source_build_gives_each_worker_512_calls_and_names_itself_at_start(
    make_driver: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callbridge.sip")
    driver = await make_driver(workers=2, **wide_rtp(2, 512))
    engine = driver.engine()
    assert engine is not None
    if engine.kind != "source":
        pytest.fail(f"the venv runs {engine.describe()}: `make pjsua2` installs the source build")
    assert engine.max_calls == 512
    assert engine.build_key
    assert driver.capacity() == 2 * 512
    started = [r.getMessage() for r in caplog.records if "sip driver started" in r.getMessage()]
    assert started == [
        f"sip driver started engine={engine.describe()} workers=2 capacity=512 sessions "
        f"base_port={driver.worker_ports()[0]}"
    ]
    assert f"(source {engine.build_key}), 512 calls per worker" in started[0]


async def test_wheel_engine_lowers_every_worker_to_4_calls(
    make_driver: Callable[..., Any],
) -> None:
    driver = await make_driver(workers=2, worker_python=wheel_python_or_skip())
    info = driver.engine()
    assert info is not None and info.kind == "wheel" and info.max_calls == 4
    assert "pjsua2-python" in info.version
    assert driver.capacity() == 8


@pytest.mark.parametrize(("rtp_ports", "cap", "expected"), [(40, None, 20), (2048, 6, 6)])
async def test_rtp_range_and_the_per_worker_cap_lower_the_calls_a_worker_takes(
    make_driver: Callable[..., Any], rtp_ports: int, cap: int | None, expected: int
) -> None:
    base = free_port(rtp_ports // 2, step=2)
    driver = await make_driver(
        workers=1,
        sip_rtp_port_min=base,
        sip_rtp_port_max=base + rtp_ports - 1,
        sip_worker_max_calls=cap,
    )
    info = driver.engine()
    assert info is not None and info.max_calls == expected
    assert driver.capacity() == expected


async def test_worker_raises_its_open_files_limit_for_two_sockets_per_call(
    make_driver: Callable[..., Any],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # workers inherit this
    try:
        driver = await make_driver(workers=1, **wide_rtp(1, 512))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    info = driver.engine()
    assert info is not None
    wanted = open_files_needed(info.max_calls)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    [pid] = driver.worker_pids()
    assert soft_open_files(pid) == info.open_files == wanted > 1024


async def test_legs_of_one_call_share_a_worker_and_capacity_is_reserved_per_call(
    make_driver: Callable[..., Any],
    sipp: Callable[..., Sipp],
    events: EventLog,
    engine: dict[str, Any],
) -> None:
    """4 calls per worker (the wheel, or our build capped to it): two calls' first legs fill
    it, a third call is refused, and the second leg of a call still fits."""
    driver = await make_driver(workers=1, **engine)
    assert driver.capacity() == 4
    far = sipp("uas_ring_until_cancel.xml", calls=3)
    for n in range(2):
        await driver.dial(dial(f"L{n}", f"C{n}", f"sip:agent@{far.uri_host}"))
    assert driver.capacity() == 0
    with pytest.raises(CapacityExhausted, match="SIP capacity exhausted"):
        await driver.dial(dial("X", "C-new", f"sip:agent@{far.uri_host}"))
    await driver.dial(dial("L0b", "C0", f"sip:agent@{far.uri_host}"))
    for leg in ("L0", "L1", "L0b"):
        await events.wait(leg, LegEventKind.RINGING)
    for leg in ("L0", "L1", "L0b"):
        await driver.hangup(leg)
    await until(lambda: driver.capacity() == 4)


async def test_reservations_spread_over_workers_fill_the_pool_and_are_released(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await make_driver(workers=2, sip_worker_max_calls=4)
    for n in range(4):
        driver.reserve(f"C{n}")
    assert driver.capacity() == 0
    with pytest.raises(CapacityExhausted, match="2 of 2 media workers running, all full"):
        driver.reserve("C-extra")
    driver.reserve("C1")  # a call holding a reservation may ask again
    driver.release("C3")
    assert driver.capacity() == 2
    driver.reserve("C-extra")
    assert driver.capacity() == 0
    # A reserved call's legs go to the worker holding its reservation, and ending them frees it.
    far = sipp("uas_ring_until_cancel.xml", calls=2)
    await driver.dial(dial("A", "C0", f"sip:agent@{far.uri_host}"))
    await driver.dial(dial("B", "C0", f"sip:customer@{far.uri_host}"))
    assert driver.worker_of("A") == driver.worker_of("B")
    assert driver.capacity() == 0
    for leg in ("A", "B"):
        await events.wait(leg, LegEventKind.RINGING)
        await driver.hangup(leg)
    await until(lambda: driver.capacity() == 2)
    driver.release("C0")  # already released by its legs: a no-op
    for sid in ("C1", "C2", "C-extra"):
        driver.release(sid)
    assert driver.capacity() == 8


async def test_a_crashed_worker_ends_only_its_own_calls(
    make_driver: Callable[..., Any], sipp: Callable[..., Sipp], events: EventLog
) -> None:
    driver = await make_driver(workers=2)
    far = sipp("uas_answer_echo.xml", calls=4, pause_ms=0, rtp_echo=True, timeout_s=30)
    for call in ("C1", "C2"):
        driver.reserve(call)
        for side in "ab":
            await driver.dial(dial(f"{call}{side}", call, f"sip:party@{far.uri_host}"))
            await events.wait(f"{call}{side}", LegEventKind.ANSWERED)
        await driver.bridge(f"{call}a", f"{call}b")
    lost, kept = driver.worker_of("C1a"), driver.worker_of("C2a")
    assert lost != kept
    victim = driver.worker_pids()[lost]
    os.kill(victim, signal.SIGKILL)
    for leg in ("C1a", "C1b"):
        event = await events.wait(leg, LegEventKind.HANGUP)
        assert event.reason == "sip worker died"
    await until(lambda: len(driver.worker_pids()) == 2 and victim not in driver.worker_pids())
    await asyncio.sleep(0.3)
    for leg in ("C2a", "C2b"):  # the other worker's call is still up
        assert events.kinds(leg)[-1] is LegEventKind.ANSWERED
    await driver.hangup("C2a")
    await driver.hangup("C2b")
    await until(lambda: driver.capacity() == (driver.engine().max_calls * 2))
