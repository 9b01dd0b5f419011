from __future__ import annotations

import pytest
from sqlalchemy import func, select

from callbridge.clock import ManualClock
from callbridge.config import ConfigError, apply_config, parse_config
from callbridge.store.repo import Store
from callbridge.store.tables import accounts, devices, exophones, users

from ..harness import DEFAULT_CONFIG


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\ncolour='red'\n", "accounts.colour"),
        ("[server]\nport=1\n", ".server"),
        (
            "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\n[[accounts.users]]\nage=3\n",
            "accounts.users.age",
        ),
        (
            "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\n[[accounts.users]]\n"
            "[[accounts.users.devices]]\ncontact_uri='+919900000001'\nring=1\n",
            "accounts.users.devices.ring",
        ),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(text)


def test_missing_token_and_bad_types_are_named() -> None:
    with pytest.raises(ConfigError, match="api_token is required"):
        parse_config("[[accounts]]\nsid='a'\napi_key='k'\n")
    with pytest.raises(ConfigError, match="rate_limit_per_minute"):
        parse_config(
            "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\nrate_limit_per_minute='x'\n"
        )
    with pytest.raises(ConfigError, match="timezone"):
        parse_config("[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\ntimezone='Mars/Olympus'\n")


async def test_applying_twice_updates_and_never_duplicates(
    store: Store, clock: ManualClock
) -> None:
    config = parse_config(DEFAULT_CONFIG)
    await apply_config(store, config, clock)
    await apply_config(store, config, clock)
    changed = parse_config(DEFAULT_CONFIG.replace('last_name = "Rao"', 'last_name = "Rao-Iyer"'))
    await apply_config(store, changed, clock)
    async with store.read() as conn:
        counts = [
            (await conn.execute(select(func.count()).select_from(t))).scalar()
            for t in (accounts, exophones, users, devices)
        ]
        names = (await conn.execute(select(users.c.last_name).order_by(users.c.last_name))).all()
    assert counts == [2, 3, 2, 2]
    assert [n[0] for n in names] == ["Kumar", "Rao-Iyer"]


async def test_device_flags_missing_from_the_file_keep_their_value(
    store: Store, clock: ManualClock
) -> None:
    text = (
        "[[accounts]]\nsid='a'\napi_key='k'\napi_token='t'\n[[accounts.users]]\n"
        "first_name='Asha'\nlast_name='Rao'\n[[accounts.users.devices]]\n"
        "contact_uri='+919900000001'\n"
    )
    await apply_config(store, parse_config(text), clock)
    async with store.tx() as conn:
        await conn.execute(devices.update().values(available=False, verified=True))
    await apply_config(store, parse_config(text), clock)
    async with store.read() as conn:
        row = (await conn.execute(select(devices.c.available, devices.c.verified))).one()
    assert tuple(row) == (False, True)
