"""The dashboard page: one HTML file shipped in the package, served with a strict CSP.

The page's inline <script> and <style> are allowed by their SHA-256 hashes, so nothing
else can run or load on it; it may only talk back to this server (`connect-src 'self'`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class DashboardPage:
    html: bytes
    content_security_policy: str

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Security-Policy": self.content_security_policy,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
        }


def _hash_source(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def content_security_policy(html: str) -> str:
    scripts = [_hash_source(body) for kind, body in _BLOCK.findall(html) if kind == "script"]
    styles = [_hash_source(body) for kind, body in _BLOCK.findall(html) if kind == "style"]
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(scripts) or "'none'"),
            "style-src " + (" ".join(styles) or "'none'"),
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@lru_cache(maxsize=1)
def load_page() -> DashboardPage:
    html = resources.files("callbridge.dashboard").joinpath("index.html").read_text("utf-8")
    return DashboardPage(html.encode(), content_security_policy(html))
