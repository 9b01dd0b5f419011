"""Everything a request handler needs, built once per app in its lifespan (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from callbridge.api.auth import Authenticator, RateLimiter
from callbridge.api.idempotency import IdempotencyStore
from callbridge.clock import Clock
from callbridge.engine.core import CallEngine
from callbridge.errors import ServiceUnavailable
from callbridge.media.links import RecordingLinks
from callbridge.metrics import Metrics
from callbridge.settings import Settings
from callbridge.store.accounts import Account
from callbridge.store.repo import Store
from callbridge.telephony.base import TelephonyDriver
from callbridge.telephony.sim import SimulatedCarrier
from callbridge.webhooks.ssrf import UrlGuard


@dataclass
class Services:
    settings: Settings
    store: Store
    clock: Clock
    driver: TelephonyDriver
    engine: CallEngine
    auth: Authenticator
    rate_limiter: RateLimiter
    idempotency: IdempotencyStore
    guard: UrlGuard
    metrics: Metrics
    links: RecordingLinks
    sim: SimulatedCarrier | None = None
    ready: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    def recording_url(self, recording_id: str, account_sid: str) -> str:
        """The credentialled URL of a recording (what stored data keeps)."""
        return self.links.url(account_sid, recording_id)

    def recording_link(self, recording_id: str, account_sid: str, ttl_s: int | None = None) -> str:
        """What a response shows: a signed link anyone can fetch until it expires; the
        account's credentials also open it (and the URL without its query) after that."""
        return self.links.link(account_sid, recording_id, ttl_s)


def services(request: Request) -> Services:
    """The running services; 503 while the server waits for its database at start."""
    svc: Services | None = getattr(request.app.state, "services", None)
    if svc is None:
        raise ServiceUnavailable("callbridge is starting: its database is not reachable yet")
    return svc


def request_id(request: Request) -> str:
    rid: str = request.scope.get("state", {}).get("request_id", "")
    return rid


def client_address(request: Request) -> str | None:
    """The peer's address (uvicorn puts a trusted proxy's X-Forwarded-For client here)."""
    client = request.scope.get("client")
    return str(client[0]) if client else None


async def authenticated(request: Request) -> Account:
    """The account of the request's Basic credentials (throttled per address and key)."""
    svc = services(request)
    return await svc.auth.authenticate(
        request.headers.get("authorization"), client_address(request)
    )


async def v1_account(request: Request, account_sid: str) -> Account:
    """`api_account` for the v1 and v2_beta dialects, which also take the account sid as the
    Basic user name."""
    svc = services(request)
    header = request.headers.get("authorization")
    account = await svc.auth.account_for_v1_path(header, account_sid, client_address(request))
    svc.rate_limiter.check(account.sid, account.rate_limit_per_minute)
    return account


async def api_account(request: Request, account_sid: str) -> Account:
    """Authenticate a /v2 or /v3 request for `account_sid` and apply the rate limit."""
    svc = services(request)
    account = await svc.auth.account_for_path(
        request.headers.get("authorization"), account_sid, client_address(request)
    )
    svc.rate_limiter.check(account.sid, account.rate_limit_per_minute)
    return account
