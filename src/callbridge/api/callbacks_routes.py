"""Status-callback delivery log and replay, and the account's webhook signing secret."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api.envelope import success
from callbridge.api.openapi import documented, envelope
from callbridge.api.openapi_models import CallbackDeliveries, CallbackDelivery, WebhookSecret
from callbridge.api.params import row_id
from callbridge.api.services import api_account, request_id, services
from callbridge.domain.views import format_time
from callbridge.errors import CallNotFound, NotFound
from callbridge.store import calls as call_store
from callbridge.store import outbox_log
from callbridge.store.outbox import DeliveryRecord
from callbridge.webhooks import secrets as secret_store
from callbridge.webhooks.worker import DeliveryWorker

router = APIRouter()


def delivery_view(record: DeliveryRecord, tz: str) -> dict[str, Any]:
    row = record.row
    return {
        "id": row.id,
        "event_sid": row.event_sid,
        "event_type": row.event_type,
        "url": row.url,
        "method": row.method,
        "content_type": row.content_type,
        "status": row.status.value,
        "attempt_count": len(record.attempts),
        "next_attempt_time": (
            format_time(row.next_attempt_at, tz) if row.status.value == "pending" else None
        ),
        "last_error": row.last_error,
        "date_created": format_time(row.created_at, tz),
        "date_delivered": format_time(row.delivered_at, tz),
        "attempts": [
            {
                "attempt": a.attempt,
                "time": format_time(a.started_at, tz),
                "status_code": a.status_code,
                "latency_ms": None if a.latency_ms is None else round(a.latency_ms, 2),
                "error": a.error,
                "next_attempt_time": format_time(a.next_attempt_at, tz),
            }
            for a in record.attempts
        ],
    }


@router.get("/v3/accounts/{account_sid}/calls/{call_sid}/callbacks")
@documented(
    "A call's status-callback deliveries and their attempts",
    "callbacks",
    envelope("callbacks", CallbackDeliveries, metadata=True),
)
async def list_callbacks(request: Request, account_sid: str, call_sid: str) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    async with svc.store.read() as conn:
        if await call_store.get_call(conn, account.sid, call_sid) is None:
            raise CallNotFound(f"call {call_sid[:64]} not found")
        records = await outbox_log.list_deliveries(conn, account.sid, call_sid)
    views = [delivery_view(r, account.timezone) for r in records]
    return success(
        request_id(request),
        "GET",
        {"callbacks": views},
        metadata={"count": len(views)},
    )


@router.post("/v3/accounts/{account_sid}/calls/{call_sid}/callbacks/{delivery_id}/replay")
@documented("Send one delivery again", "callbacks", envelope("callback", CallbackDelivery))
async def replay_callback(
    request: Request, account_sid: str, call_sid: str, delivery_id: str
) -> Response:
    svc = services(request)
    account = await api_account(request, account_sid)
    number = row_id(delivery_id)
    if number is None:
        raise NotFound("callback delivery not found")
    async with svc.store.tx() as conn:
        record = await outbox_log.get_delivery(conn, account.sid, number)
        if record is None or record.row.call_sid != call_sid:
            raise NotFound("callback delivery not found")
        await outbox_log.replay(conn, account.sid, number, svc.clock.now())
        replayed = await outbox_log.get_delivery(conn, account.sid, number)
    worker: DeliveryWorker | None = svc.extras.get("worker")
    if worker is not None:
        worker.wake()
    assert replayed is not None
    return success(
        request_id(request), "POST", {"callback": delivery_view(replayed, account.timezone)}
    )


def _secret_view(secrets: list[str]) -> dict[str, str | None]:
    return {"current": secrets[0], "previous": secrets[1] if len(secrets) > 1 else None}


@router.get("/v3/accounts/{account_sid}/webhook-secret")
@documented(
    "The secret that signs this account's callbacks",
    "callbacks",
    envelope("webhook_secret", WebhookSecret),
)
async def get_webhook_secret(request: Request, account_sid: str) -> Response:
    """The secret that signs this account's callbacks (`webhook-signature`, Standard Webhooks)."""
    svc = services(request)
    account = await api_account(request, account_sid)
    async with svc.store.read() as conn:
        secrets = await secret_store.get_secrets(conn, account.sid)
    return success(
        request_id(request),
        "GET",
        {"webhook_secret": _secret_view(secrets)},
    )


@router.post("/v3/accounts/{account_sid}/webhook-secret/rotate")
@documented(
    "Rotate the signing secret (the previous one keeps signing beside it)",
    "callbacks",
    envelope("webhook_secret", WebhookSecret),
)
async def rotate_webhook_secret(request: Request, account_sid: str) -> Response:
    """New current secret; the old one keeps signing beside it until the next rotation."""
    svc = services(request)
    account = await api_account(request, account_sid)
    async with svc.store.tx() as conn:
        secret = await secret_store.rotate_secret(conn, account.sid, svc.clock.now())
    if secret is None:
        raise NotFound("account not found")
    async with svc.store.read() as conn:
        secrets = await secret_store.get_secrets(conn, account.sid)
    return success(
        request_id(request),
        "POST",
        {"webhook_secret": _secret_view(secrets)},
    )
