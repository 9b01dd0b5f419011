"""An in-process callbridge for tests: the real app, store and sim carrier on a ManualClock."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from callbridge.api.app import create_app
from callbridge.api.services import Services
from callbridge.clock import ManualClock
from callbridge.config import apply_config, parse_config
from callbridge.settings import Settings
from callbridge.store.repo import Store
from callbridge.telephony.sim import Behaviour, Outcome, SimulatedCarrier
from callbridge.telephony.sim_media import SimMediaPlane

from .conftest import basic

ACCOUNT = "acme"
KEY = "k_live_1"
TOKEN = "t_live_1"
EXOPHONE = "+912241499102"
AGENT = "+919900000001"
AGENT_2 = "+919900000002"
CUSTOMER = "+919800000001"

DEFAULT_CONFIG = f"""
[[accounts]]
sid = "{ACCOUNT}"
api_key = "{KEY}"
api_token = "{TOKEN}"
timezone = "Asia/Kolkata"
allow_voip = true
rate_limit_per_minute = 0
exophones = ["{EXOPHONE}", "+918047091999"]

[[accounts.users]]
first_name = "Asha"
last_name = "Rao"
email = "asha@example.com"

[[accounts.users.devices]]
contact_uri = "{AGENT}"
name = "Asha mobile"
available = true
verified = true

[[accounts.users]]
first_name = "Ravi"
last_name = "Kumar"
email = "ravi@example.com"

[[accounts.users.devices]]
contact_uri = "{AGENT_2}"
name = "Ravi mobile"
available = true
verified = true

[[accounts]]
sid = "other"
api_key = "k_other"
api_token = "t_other"
exophones = ["+918047091000"]
"""


class Harness:
    def __init__(
        self,
        services: Services,
        client: httpx.AsyncClient,
        clock: ManualClock,
        app: Any = None,
    ) -> None:
        self.services = services
        self.client = client
        self.clock = clock
        self.app = app
        self.auth = basic(KEY, TOKEN)

    def client_at(self, address: str) -> httpx.AsyncClient:
        """Another client of the same app whose requests come from `address` (close it)."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://callbridge")

    @property
    def sim(self) -> SimulatedCarrier:
        assert self.services.sim is not None
        return self.services.sim

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds, settle=self.settle)

    async def settle(self) -> None:
        await self.services.engine.settle()
        for hook in self.services.extras.get("settle_hooks", []):
            await hook()

    def phone(self, uri: str, outcome: str = "answer", **kw: Any) -> None:
        self.sim.set_behaviour(uri, Behaviour(outcome=Outcome(outcome), **kw))

    async def create_call(
        self,
        from_uri: str = AGENT,
        to_uri: str = CUSTOMER,
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "from": {"contact_uri": from_uri},
            "to": {"contact_uri": to_uri},
            "virtual_number": EXOPHONE,
            **fields,
        }
        response = await self.client.post(
            f"/v3/accounts/{ACCOUNT}/calls", json=body, headers={**self.auth, **(headers or {})}
        )
        await self.settle()
        return response

    async def call(self, sid: str) -> dict[str, Any]:
        r = await self.client.get(f"/v3/accounts/{ACCOUNT}/calls/{sid}", headers=self.auth)
        assert r.status_code == 200, r.text
        details: dict[str, Any] = r.json()["response"]["call_details"]
        return details

    async def legs(self, sid: str) -> dict[str, Any]:
        r = await self.client.get(f"/v3/accounts/{ACCOUNT}/calls/{sid}/legs", headers=self.auth)
        assert r.status_code == 200, r.text
        details: dict[str, Any] = r.json()["response"]["leg_details"]
        return details


@asynccontextmanager
async def running_app(
    store: Store,
    clock: ManualClock,
    *,
    config: str = DEFAULT_CONFIG,
    settings: Settings | None = None,
    driver: SimulatedCarrier | None = None,
) -> AsyncIterator[Harness]:
    with tempfile.TemporaryDirectory(prefix="callbridge-test-") as data_dir:
        if settings is None:
            # Recordings land in a directory of the test's own, never the working directory.
            settings = Settings(
                allow_private_urls=True, log_level="WARNING", data_dir=Path(data_dir)
            )
        await apply_config(
            store, parse_config(config), clock, sip_realm=settings.sip_registrar_realm
        )
        if driver is None:
            driver = SimulatedCarrier(clock, media=SimMediaPlane(clock))
        app = create_app(settings, driver=driver, store=store, clock=clock, run_background=False)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://callbridge"
            ) as client:
                yield Harness(app.state.services, client, clock, app)
