"""scripts/build_pjsua2.py: the vendored source, the server-sized `config_site.h`, the cache key,
the wheel fallback without a compiler, and that the venv runs the current cached build."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.sip.conftest import require

ROOT = Path(__file__).resolve().parents[2]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_pjsua2", ROOT / "scripts/build_pjsua2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_script()
SOABI = "cpython-311-x86_64-linux-gnu"


def defines() -> dict[str, int]:
    found: dict[str, int] = {}
    for name, value in re.findall(r"#define (\w+)\s+\(?(\d+)", build.CONFIG_SITE):
        found[name] = int(value)
    return found


def test_vendored_source_is_the_pinned_pjproject_tarball() -> None:
    assert build.TARBALL.exists()
    assert build.sha256_of(build.TARBALL) == build.TARBALL_SHA256


def test_config_site_sizes_the_engine_for_hundreds_of_calls_without_video() -> None:
    d = defines()
    calls = d["PJSUA_MAX_CALLS"]
    assert calls >= 256
    assert d["PJSUA_MAX_CONF_PORTS"] >= 4 * calls  # calls, players, recorders, taps
    assert d["PJSUA_MAX_PLAYERS"] >= 2 * calls and d["PJSUA_MAX_RECORDERS"] >= 2 * calls
    assert d["PJ_IOQUEUE_MAX_HANDLES"] >= 4 * calls  # RTP + RTCP per call, SIP, headroom
    assert d["PJSIP_MAX_TSX_COUNT"] >= 4 * calls and d["PJSIP_MAX_DIALOG_COUNT"] >= 2 * calls
    assert d["PJMEDIA_HAS_VIDEO"] == 0
    for flag in ("--enable-epoll", "--disable-video", "--disable-sound", "--disable-opus"):
        assert flag in build.CONFIGURE_FLAGS


def test_cache_key_follows_source_flags_config_site_and_python_abi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = build.build_key(build.TARBALL_SHA256, SOABI)
    assert key == build.build_key(build.TARBALL_SHA256, SOABI)
    assert key != build.build_key("0" * 64, SOABI)
    assert key != build.build_key(build.TARBALL_SHA256, "cpython-312-x86_64-linux-gnu")
    monkeypatch.setattr(build, "CONFIG_SITE", build.CONFIG_SITE + "#define X 1\n")
    assert key != build.build_key(build.TARBALL_SHA256, SOABI)
    monkeypatch.undo()
    monkeypatch.setattr(build, "CONFIGURE_FLAGS", (*build.CONFIGURE_FLAGS, "--disable-ssl"))
    assert key != build.build_key(build.TARBALL_SHA256, SOABI)


def test_without_a_compiler_or_swig_the_wheel_is_installed_instead(tmp_path: Path) -> None:
    (tmp_path / "cc").write_text("#!/bin/sh\n")
    (tmp_path / "cc").chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", str(tmp_path))
        missing = build.missing_tools()
    assert missing == ["c++", "make", "swig"]
    assert build.choose_engine(False, missing) == ("wheel", "missing c++, make, swig")
    assert build.choose_engine(True, []) == ("wheel", "asked")
    assert build.choose_engine(False, [])[0] == "source"
    assert build.requirements("sip-wheel") == ["pjsua2-python>=2.14"]


def test_the_venv_runs_the_cached_build_and_a_second_run_only_relinks_it() -> None:
    missing = build.missing_tools()
    require(f"{', '.join(missing)} to build pjsua2 (this venv runs the wheel)", not missing)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/build_pjsua2.py"), "--venv", sys.prefix],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    soabi = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_config_var('SOABI'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    key = build.build_key(build.TARBALL_SHA256, soabi)
    assert done.stdout.strip().splitlines()[-1] == (
        f"[pjsua2] engine: source build {key} (512 calls per worker) in {sys.prefix}"
    )
    assert "configuring" not in done.stdout and elapsed < 20
    probe = "import json, pathlib, pjsua2; p = pathlib.Path(pjsua2.__file__).parent; "
    probe += "print(json.loads((p / 'callbridge_pjsua2_build.json').read_text())['key'])"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == key, found.stderr
