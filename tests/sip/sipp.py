"""Test and bench helpers for SIPp on 127.0.0.1: start a scenario, free ports, PCMU tones, and
the dominant frequency of a PCM stream."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SCENARIOS = Path(__file__).parent / "scenarios"
DTMF_PCAP = Path("/usr/share/sip-tester/dtmf_2833_1.pcap")
HOST = "127.0.0.1"


def sipp_path() -> str | None:
    return shutil.which("sipp")


def free_port(count: int = 1, *, step: int = 1) -> int:
    """A base port such that `base + i*step` (i < count) and +1 of each are free on UDP and TCP."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            base: int = probe.getsockname()[1]
        if base + count * step + 2 > 65000 or base < 20000:
            continue
        if all(port_free(base + i * step + j) for i in range(count) for j in (0, 1)):
            return base
    raise RuntimeError("no free port range found")


def port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
    return True


def ulaw_encode(sample: int) -> int:
    """G.711 mu-law of one 16-bit sample (audioop is deprecated)."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def write_tone(path: Path, hz: float, seconds: float = 1.0, amplitude: int = 8000) -> None:
    """A raw PCMU file of a sine tone, whole cycles so SIPp can loop it without a click."""
    samples = int(8000 * seconds)
    path.write_bytes(
        bytes(
            ulaw_encode(int(amplitude * math.sin(2 * math.pi * hz * n / 8000)))
            for n in range(samples)
        )
    )


def dominant_hz(pcm: bytes, candidates: Sequence[float]) -> float:
    """Which candidate frequency carries the most energy in 16-bit LE PCM (Goertzel)."""
    count = len(pcm) // 2
    samples = memoryview(pcm)[: count * 2].cast("h")
    best, best_power = candidates[0], -1.0
    for hz in candidates:
        coeff = 2 * math.cos(2 * math.pi * hz / 8000)
        s1 = s2 = 0.0
        for x in samples:
            s0 = x + coeff * s1 - s2
            s2, s1 = s1, s0
        power = s1 * s1 + s2 * s2 - coeff * s1 * s2
        if power > best_power:
            best, best_power = hz, power
    return best


def copy_dtmf_pcap(dest: Path, payload_type: int = 120) -> None:
    """SIPp's RFC 2833 capture uses payload type 101; pjsua offers telephone-event as 120, and
    an answerer mirrors the offer, so rewrite the RTP payload type of every packet."""
    data = bytearray(DTMF_PCAP.read_bytes())
    offset = 24  # pcap global header
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset + 8 : offset + 12], "little")
        rtp = offset + 16 + 14 + 20 + 8  # Ethernet, IPv4, UDP
        data[rtp + 1] = (data[rtp + 1] & 0x80) | payload_type
        offset += 16 + length
    dest.write_bytes(bytes(data))


def rms(pcm: bytes) -> float:
    count = len(pcm) // 2
    if not count:
        return 0.0
    samples = memoryview(pcm)[: count * 2].cast("h")
    return math.sqrt(sum(x * x for x in samples) / count)


@dataclass
class Sipp:
    """One SIPp process we started; `stop()` kills it by PID."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def uri_host(self) -> str:
        return f"{HOST}:{self.port}"

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_sipp(
    scenario: str,
    workdir: Path,
    *,
    remote: str | None = None,
    calls: int = 1,
    timeout_s: int = 40,
    pause_ms: int | None = None,
    tone_hz: float | None = None,
    rtp_echo: bool = False,
    keys: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Sipp:
    """Start SIPp with a scenario from tests/sip/scenarios (UAS unless `remote` is given)."""
    binary = sipp_path()
    if binary is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    workdir.mkdir(parents=True, exist_ok=True)
    if tone_hz is not None:
        write_tone(workdir / "tone.ulaw", tone_hz)
    if DTMF_PCAP.exists():
        copy_dtmf_pcap(workdir / "dtmf.pcap")
    base = free_port(4, step=2)
    port, media_port, control_port = base, base + 2, base + 6
    args = [
        binary,
        *([remote] if remote else []),
        "-sf",
        str(SCENARIOS / scenario),
        "-i",
        HOST,
        "-mi",
        HOST,
        "-p",
        str(port),
        "-mp",
        str(media_port),
        "-cp",
        str(control_port),
        "-m",
        str(calls),
        "-timeout",
        f"{timeout_s}s",
        "-nostdin",
        "-skip_rlimit",
        "-nr",
    ]
    if pause_ms is not None:
        args += ["-d", str(pause_ms)]
    if rtp_echo:
        args.append("-rtp_echo")
    for key, value in (keys or {}).items():
        args += ["-key", key, value]
    args += list(extra)
    log = workdir / f"sipp-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    sipp = Sipp(process, port, workdir, log)
    _wait_listening(sipp)
    return sipp


def _wait_listening(sipp: Sipp, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sipp.process.poll() is not None:
            raise RuntimeError(f"sipp exited early: {sipp.output()[-2000:]}")
        if not port_free(sipp.port):  # bound on UDP, or on TCP with `-t t1`
            return
        time.sleep(0.02)
    raise RuntimeError("sipp did not bind its port")
