"""Build pjsua2 (pjproject's Python binding) from the vendored source with server limits, cache
the result, and install it into a venv — or fall back to the PyPI wheel without a compiler.

    python scripts/build_pjsua2.py --venv .venv [--wheel-venv] [--force-wheel]

The build is keyed on the tarball's SHA-256, the configure flags, `config_site.h` and the
Python ABI; it lives in `<venv>/pjsua2-build/<key>/` (or `$CALLBRIDGE_PJSUA2_CACHE/<key>/`), so
a second run with the same inputs only re-links the venv to it (well under a second). The
venv sees the module through a `.pth` file pointing at `<key>/python/`, next to which
`callbridge_pjsua2_build.json` tells the SIP worker which engine it runs.

`--wheel-venv` also creates `<venv>/pjsua2-wheel/`: a small venv with the PyPI wheel (4 calls
per process) and this tree's `src/`, in which the test suite runs SIP workers to prove the
wheel still works. It belongs to one checkout, so it lives in its venv, never in a shared cache.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARBALL = ROOT / "vendor" / "pjproject-b7317ffca.tar.gz"
TARBALL_SHA256 = "c16641d11df33a1a00524af513862b2ac967f6a87166457ddf062ad6c09ce084"
RECIPE = 1
"""Bump when the build steps change in a way the flags and config_site do not show."""

MAX_CALLS = 512
CONF_PORTS = 2048

CONFIG_SITE = f"""\
/* callbridge's pjproject build: a media server process, not a softphone. */
#define PJSUA_MAX_CALLS                 {MAX_CALLS}
#define PJSUA_MAX_CONF_PORTS            {CONF_PORTS}
#define PJSUA_MAX_PLAYERS               {2 * MAX_CALLS}
#define PJSUA_MAX_RECORDERS             {2 * MAX_CALLS}
#define PJSUA_MAX_ACC                   8
/* Two sockets per call (RTP, RTCP), SIP transports, and headroom. */
#define PJ_IOQUEUE_MAX_HANDLES          {8 * MAX_CALLS}
#define PJ_IOQUEUE_MAX_EVENTS_IN_SINGLE_POLL 64
#define PJSIP_MAX_TSX_COUNT             ({16 * MAX_CALLS} - 1)
#define PJSIP_MAX_DIALOG_COUNT          ({4 * MAX_CALLS} - 1)
#define PJMEDIA_HAS_VIDEO               0
#define PJSUA_MAX_VID_WINS              0
"""

CONFIGURE_FLAGS = (
    "--enable-epoll",
    "--disable-video",
    "--disable-sound",
    "--disable-opencore-amr",
    "--disable-silk",
    "--disable-libwebrtc",
    "--disable-libyuv",
    "--disable-v4l2",
    "--disable-ffmpeg",
    "--disable-openh264",
    "--disable-sdl",
    "--disable-speex-aec",
    "--disable-bcg729",
    "--disable-gsm-codec",
    "--disable-ilbc-codec",
    "--disable-l16-codec",
    "--disable-g722-codec",
    "--disable-g7221-codec",
    "--disable-ipp",
    "--disable-opus",
)
CFLAGS = "-O2 -fPIC"
BUILD_TOOLS = ("cc", "c++", "make", "swig")
INFO_NAME = "callbridge_pjsua2_build.json"
PTH_NAME = "callbridge_pjsua2.pth"
WHEEL_EXTRA = "sip-wheel"
WHEEL_DIST = "pjsua2-python"
WHEEL_VENV = "pjsua2-wheel"
WORKER_DEPS = ("lameenc", "phonenumbers")
"""What a SIP worker imports besides pjsua2 and the standard library."""


def log(message: str) -> None:
    print(f"[pjsua2] {message}", flush=True)


# --- what to build -------------------------------------------------------------------------


def build_key(tarball_sha256: str, soabi: str) -> str:
    """The cache key: source, flags, config_site, recipe and Python ABI."""
    recipe = json.dumps(
        {
            "source": tarball_sha256,
            "configure": CONFIGURE_FLAGS,
            "cflags": CFLAGS,
            "config_site": CONFIG_SITE,
            "recipe": RECIPE,
            "abi": soabi,
        },
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:20]


def missing_tools(which: Sequence[str] = BUILD_TOOLS) -> list[str]:
    return [tool for tool in which if shutil.which(tool) is None]


def choose_engine(force_wheel: bool, missing: Sequence[str]) -> tuple[str, str]:
    """`("source", why)` when everything to build is here, else `("wheel", why)`."""
    if force_wheel:
        return "wheel", "asked"
    if missing:
        return "wheel", f"missing {', '.join(missing)}"
    return "source", f"{' '.join(BUILD_TOOLS)} found"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def requirements(extra: str) -> list[str]:
    """Requirement strings of a `pyproject.toml` extra, or of the main dependencies by name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    if extra in project.get("optional-dependencies", {}):
        return list(project["optional-dependencies"][extra])
    return [dep for dep in project["dependencies"] if dep.split(">")[0].split("=")[0] == extra]


# --- venv helpers --------------------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def pip(python: Path, *args: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "--quiet", "--disable-pip-version-check", *args], check=True
    )


def installed(python: Path, dist: str) -> bool:
    probe = f"import importlib.metadata as m; m.distribution({dist!r})"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One build per cache directory at a time (two `make` runs, two worktrees sharing it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the build -----------------------------------------------------------------------------


def run(args: Sequence[str], cwd: Path, logfile: Path, env: dict[str, str] | None = None) -> None:
    with logfile.open("ab") as out:
        out.write(f"\n$ {' '.join(args)}  (in {cwd})\n".encode())
        out.flush()
        done = subprocess.run(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(
            "\n".join([f"[pjsua2] build step failed: {' '.join(args)}", *tail])
            + f"\n[pjsua2] full log: {logfile}"
        )


def build(python: Path, dest: Path, key: str) -> None:
    """Configure, compile and link the libraries and the SWIG module into `dest/python/`."""
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=dest.parent))
    logfile = work / "build.log"
    try:
        with tarfile.open(TARBALL) as tar:
            tar.extractall(work, filter="tar")
        [src] = [p for p in work.iterdir() if p.is_dir()]
        (src / "pjlib" / "include" / "pj" / "config_site.h").write_text(CONFIG_SITE)
        env = {**os.environ, "CFLAGS": CFLAGS, "CXXFLAGS": CFLAGS}
        started = time.monotonic()
        log(f"configuring ({len(CONFIGURE_FLAGS)} flags); log: {logfile}")
        run(["./configure", *CONFIGURE_FLAGS], src, logfile, env)
        log("building the libraries")
        run(["make", "dep"], src, logfile, env)
        run(["make", f"-j{jobs}", "lib"], src, logfile, env)
        log("building the SWIG Python module")
        swig = src / "pjsip-apps" / "src" / "swig" / "python"
        run(["make", f"PYTHON_EXE={python}"], swig, logfile, env)
        [module] = list(swig.glob("build/lib*/_pjsua2*.so"))
        [wrapper] = list(swig.glob("build/lib*/pjsua2.py"))
        out = work / "python"
        out.mkdir()
        shutil.copy2(module, out / module.name)
        shutil.copy2(wrapper, out / "pjsua2.py")
        info = {
            "engine": "source",
            "key": key,
            "source_sha256": TARBALL_SHA256,
            "max_calls": MAX_CALLS,
            "conf_ports": CONF_PORTS,
            "configure": list(CONFIGURE_FLAGS),
            "build_seconds": round(time.monotonic() - started),
        }
        (out / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(src)  # objects and sources: ~200 MB nothing imports
        work.rename(dest)
        log(f"built in {info['build_seconds']} s → {dest}")
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def install_source_build(python: Path, dest: Path) -> None:
    """Point the venv at the cached module, replacing the wheel if it was installed."""
    if installed(python, WHEEL_DIST):
        log(f"removing the {WHEEL_DIST} wheel from the venv")
        pip(python, "uninstall", "--yes", WHEEL_DIST)
    pth = site_packages(python) / PTH_NAME
    line = str(dest / "python") + "\n"
    if not pth.exists() or pth.read_text() != line:
        pth.write_text(line)


def install_wheel(python: Path) -> None:
    pth = site_packages(python) / PTH_NAME
    pth.unlink(missing_ok=True)
    pip(python, "install", *requirements(WHEEL_EXTRA))


def ensure_wheel_venv(main_venv: Path) -> Path:
    """A venv whose python runs SIP workers on the PyPI wheel (callbridge from this tree)."""
    venv = main_venv / WHEEL_VENV
    wanted = [*requirements(WHEEL_EXTRA), *(r for d in WORKER_DEPS for r in requirements(d))]
    stamp = venv / ".callbridge-stamp"
    signature = json.dumps({"requirements": wanted, "src": str(ROOT / "src")})
    if stamp.exists() and stamp.read_text() == signature:
        return venv
    with locked(main_venv / f".{WHEEL_VENV}.lock"):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip(venv_python(venv), "install", *wanted)
        (site_packages(venv_python(venv)) / "callbridge_src.pth").write_text(
            str(ROOT / "src") + "\n"
        )
        stamp.write_text(signature)
    log(f"wheel venv ready: {venv}")
    return venv


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--force-wheel", action="store_true", help="install the PyPI wheel")
    parser.add_argument("--wheel-venv", action="store_true", help="also make the wheel venv")
    parser.add_argument("--print-key", action="store_true", help="print the cache key and exit")
    args = parser.parse_args(argv)
    venv = args.venv.resolve()
    python = venv_python(venv)
    env_cache = os.environ.get("CALLBRIDGE_PJSUA2_CACHE")
    cache = (args.cache_dir or (Path(env_cache) if env_cache else venv / "pjsua2-build")).resolve()
    soabi = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('SOABI'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    source_sha256 = sha256_of(TARBALL)
    if source_sha256 != TARBALL_SHA256:
        raise SystemExit(f"[pjsua2] {TARBALL} does not match its SHA-256 {TARBALL_SHA256}")
    key = build_key(source_sha256, soabi)
    if args.print_key:
        print(key)
        return 0
    if args.wheel_venv:
        ensure_wheel_venv(venv)
    engine, reason = choose_engine(args.force_wheel, missing_tools())
    if engine == "wheel":
        log(f"installing the PyPI wheel ({reason}): 4 calls per worker process")
        install_wheel(python)
        return 0
    dest = cache / key
    if not (dest / "python" / INFO_NAME).exists():
        with locked(cache / ".build.lock"):
            if not (dest / "python" / INFO_NAME).exists():
                build(python, dest, key)
    install_source_build(python, dest)
    log(f"engine: source build {key} ({MAX_CALLS} calls per worker) in {venv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
