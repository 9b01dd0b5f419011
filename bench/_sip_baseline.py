"""The same-run baseline of bench/sip.py: a SIPp UAC calling a SIPp UAS directly on loopback
with the RTP load of the callbridge run (every call streams a tone one way and gets it echoed
back), measuring INVITE→200, failures and SIPp's own CPU per concurrent call."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from tests.sip.sipp import start_sipp


@dataclass(frozen=True)
class Baseline:
    calls: int
    ok: int
    failed: int
    invite_to_200_ms: list[float]
    cpu_pct_per_call: float
    """Percent of one core per concurrent call (both SIPp processes together)."""
    setup_rate: float


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_baseline(workdir: Path, calls: int, rate: float, hold_s: float) -> Baseline:
    ramp_s = calls / rate
    bound = int(ramp_s + hold_s + 60)
    uas = start_sipp(
        "uas_answer_echo.xml",
        workdir / "base-uas",
        calls=calls,
        pause_ms=0,
        timeout_s=bound,
        rtp_echo=True,
    )
    uac = start_sipp(
        "uac_call.xml",
        workdir / "base-uac",
        remote=f"127.0.0.1:{uas.port}",
        calls=calls,
        timeout_s=bound,
        pause_ms=int(hold_s * 1000),
        tone_hz=600,
        keys={"caller": "919900000001"},
        extra=["-r", f"{rate:g}", "-trace_rtt", "-rtt_freq", "1", "-trace_stat", "-fd", "1"],
    )
    procs = [psutil.Process(uas.process.pid), psutil.Process(uac.process.pid)]
    used = dict.fromkeys(procs, 0.0)
    started = time.monotonic()
    try:
        # Sampled while they run: a process's CPU time is gone once it is reaped.
        while uac.process.poll() is None and time.monotonic() - started < bound:
            for proc in procs:
                try:
                    times = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                used[proc] = times.user + times.system
            time.sleep(0.5)
    finally:
        uac.stop()
        uas.stop()
    elapsed = time.monotonic() - started
    times: list[float] = []
    for path in uac.workdir.glob("*_rtt.csv"):
        with path.open() as handle:
            for row in csv.reader(handle, delimiter=";"):
                if len(row) >= 3 and row[2].replace(".", "", 1).isdigit():
                    times.append(float(row[2]))
    ok = failed = 0
    for path in uac.workdir.glob("*_.csv"):
        rows = list(csv.reader(path.open(), delimiter=";"))
        if len(rows) >= 2:
            header, last = rows[0], rows[-1]
            ok = int(last[header.index("SuccessfulCall(C)")])
            failed = int(last[header.index("FailedCall(C)")])
    call_seconds = calls * hold_s
    return Baseline(
        calls=calls,
        ok=ok,
        failed=failed,
        invite_to_200_ms=times,
        cpu_pct_per_call=100 * sum(used.values()) / call_seconds if call_seconds else 0.0,
        setup_rate=calls / max(ramp_s, elapsed - hold_s),
    )
