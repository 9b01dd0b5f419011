"""Starting a worker's pjsua2 engine: the Endpoint (G.711 only, null audio device, NAT settings),
its SIP transports and account, the open-files limit, and what engine and capacity it got.

Everything here runs on the worker's pj thread during start-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import json
import logging
import resource
from pathlib import Path
from typing import Any

import pjsua2 as pj

from callbridge.telephony.sip_protocol import (
    DEFAULT_STUN_PORT,
    EngineInfo,
    WorkerConfig,
    open_files_needed,
)

log = logging.getLogger("callbridge.sip.worker")

BUILD_INFO = "callbridge_pjsua2_build.json"
"""Written next to the module by scripts/build_pjsua2.py; absent in the PyPI wheel."""


def raise_open_files(wanted: int) -> int:
    """Lift the soft open-files limit towards `wanted` (up to the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft) if soft != resource.RLIM_INFINITY else wanted


def stun_address(server: str) -> str:
    """`host` or `host:port` → `host:port` as pjsua wants it."""
    return server if ":" in server.rsplit("]", 1)[-1] else f"{server}:{DEFAULT_STUN_PORT}"


def create_endpoint(config: WorkerConfig) -> Any:
    """Create, configure and start the Endpoint; transports bound to `bind_host`."""
    ep = pj.Endpoint()
    # pjlib logs its start-up at its compiled-in level, before libInit applies ours.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(pj._pjsua2.__file__).pj_log_set_level(ctypes.c_int(config.pj_log_level))
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = False
    cfg.uaConfig.maxCalls = config.requested_max_calls
    cfg.uaConfig.userAgent = "callbridge"
    for server in config.stun_servers:
        cfg.uaConfig.stunServer.append(stun_address(server))
    cfg.logConfig.level = config.pj_log_level
    cfg.logConfig.consoleLevel = config.pj_log_level
    cfg.logConfig.msgLogging = False
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    cfg.medConfig.channelCount = 1
    cfg.medConfig.noVad = True
    cfg.medConfig.ecTailLen = 0
    cfg.medConfig.audioFramePtime = 20
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = config.sip_port
    tcfg.boundAddress = config.bind_host
    if config.public_address:
        tcfg.publicAddress = config.public_address
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    if config.tcp:
        ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tcfg)
    ep.audDevManager().setNullDev()
    for codec in ep.codecEnum2():
        keep = codec.codecId.upper().startswith(("PCMU/8000", "PCMA/8000"))
        ep.codecSetPriority(codec.codecId, 255 if keep else 0)
    ep.libStart()
    return ep


def account_config(config: WorkerConfig) -> Any:
    """The one local account: its media ports, NAT handling, proxy and trunk credentials."""
    cfg = pj.AccountConfig()
    cfg.idUri = f"sip:callbridge@{config.public_address or config.bind_host}:{config.sip_port}"
    media = cfg.mediaConfig.transportConfig
    media.port = config.rtp_port_min
    media.portRange = config.rtp_port_count
    media.boundAddress = config.bind_host
    if config.public_address:
        media.publicAddress = config.public_address
    nat = cfg.natConfig
    # Addresses come from the settings (public address) or STUN, never from what a peer saw.
    nat.sdpNatRewriteUse = 0
    nat.contactRewriteUse = 0
    nat.viaRewriteUse = 0
    stun = pj.PJSUA_STUN_USE_DEFAULT if config.stun_servers else pj.PJSUA_STUN_USE_DISABLED
    nat.sipStunUse = stun
    nat.mediaStunUse = stun
    if config.outbound_proxy:
        cfg.sipConfig.proxies.append(config.outbound_proxy)
    if config.username:
        cred = pj.AuthCredInfo("digest", "*", config.username, 0, config.password or "")
        cfg.sipConfig.authCreds.append(cred)
    return cfg


def read_max_calls(requested: int) -> int:
    """The engine's real call limit (`pjsua_call_get_max_count`), not what was requested."""
    try:
        lib = ctypes.CDLL(pj._pjsua2.__file__)
        lib.pjsua_call_get_max_count.restype = ctypes.c_uint
        return int(lib.pjsua_call_get_max_count())
    except (OSError, AttributeError):
        log.warning("cannot read pjsua max calls; assuming the requested figure")
        return requested


def engine_info(ep: Any, max_calls: int, open_files: int) -> EngineInfo:
    """Which pjsua2 this is: our source build (its build file says so) or the PyPI wheel."""
    version = str(ep.libVersion().full)
    build_file = Path(pj.__file__).resolve().parent / BUILD_INFO
    if build_file.exists():
        try:
            key = str(json.loads(build_file.read_text()).get("key"))
        except (OSError, ValueError):
            key = "unknown"
        return EngineInfo("source", version, max_calls, key, open_files)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        version += f", pjsua2-python {importlib.metadata.version('pjsua2-python')}"
    return EngineInfo("wheel", version, max_calls, None, open_files)


__all__ = [
    "account_config",
    "create_endpoint",
    "engine_info",
    "open_files_needed",
    "raise_open_files",
    "read_max_calls",
]
