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
    node_id: str
    auth: Authenticator
    rate_limiter: RateLimiter
    idempotency: IdempotencyStore
    guard: UrlGuard
    metrics: Metrics
    sim: SimulatedCarrier | None = None
    ready: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    def recording_url(self, recording_id: str, account_sid: str) -> str:
        base = (
            self.settings.public_base_url or f"http://{self.settings.host}:{self.settings.port}"
        ).rstrip("/")
        return f"{base}/v3/accounts/{account_sid}/recordings/{recording_id}.mp3"


def services(request: Request) -> Services:
    """The running services; 503 while the server waits for its database at start."""
    svc: Services | None = getattr(request.app.state, "services", None)
    if svc is None:
        raise ServiceUnavailable("callbridge is starting: its database is not reachable yet")
    return svc


def request_id(request: Request) -> str:
    rid: str = request.scope.get("state", {}).get("request_id", "")
    return rid


async def api_account(request: Request, account_sid: str) -> Account:
    """Authenticate a /v2 or /v3 request for `account_sid` and apply the rate limit."""
    svc = services(request)
    account = await svc.auth.account_for_path(request.headers.get("authorization"), account_sid)
    svc.rate_limiter.check(account.sid, account.rate_limit_per_minute)
    return account
