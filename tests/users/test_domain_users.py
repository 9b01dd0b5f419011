from __future__ import annotations

import pytest

from callbridge.domain.calls import CallStatus
from callbridge.domain.users import (
    V2_STATUS,
    InvalidUserField,
    Role,
    UserFields,
    validate_email,
    validate_name,
    validate_role,
)


@pytest.mark.parametrize(
    "name",
    [
        "Asha",
        "A. Rao",
        "O'Neil",
        "Jean-Luc",
        "abc",
        "R2D2x",
        "a" * 20,
        "José",
        "Müller",
        "अनिल",
        "王小明",
    ],
)
def test_valid_names_pass(name: str) -> None:
    assert validate_name("first_name", name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Al", "3 to 20"),
        ("a" * 21, "3 to 20"),
        ("Mary Ann", "space only after a period"),
        ("Asha_R", "may contain only"),
        ("Asha\u200b", "may contain only"),
        ("Asha\x00", "may contain only"),
        ("Asha!", "may contain only"),
    ],
)
def test_invalid_names_name_the_field(name: str, why: str) -> None:
    with pytest.raises(InvalidUserField, match=why) as info:
        validate_name("last_name", name)
    assert str(info.value).startswith("last_name")


def test_email_is_optional_and_lower_cased() -> None:
    assert validate_email(None) is None
    assert validate_email("  ") is None
    assert validate_email("Asha@Example.COM") == "asha@example.com"
    for bad in ["asha", "asha@", "@x.com", "a b@x.com", "asha@x"]:
        with pytest.raises(InvalidUserField, match="email"):
            validate_email(bad)


def test_role_defaults_to_user_and_rejects_others() -> None:
    assert validate_role(None) is Role.USER
    assert validate_role("Supervisor") is Role.SUPERVISOR
    with pytest.raises(InvalidUserField, match="role must be admin, supervisor or user"):
        validate_role("root")


def test_fields_parameter() -> None:
    assert UserFields.parse(None, default=False) == UserFields(devices=False, active_call=False)
    assert UserFields.parse("devices", default=False) == UserFields(True, False)
    assert UserFields.parse("devices,active_call,last_login", default=False) == UserFields()
    with pytest.raises(InvalidUserField, match="unknown field"):
        UserFields.parse("devices,secrets", default=False)


def test_every_v3_status_has_a_v2_name() -> None:
    assert {s: V2_STATUS[s] for s in CallStatus} == {
        CallStatus.COMPLETED: "completed",
        CallStatus.FROM_LEG_UNANSWERED: "agent_unanswered",
        CallStatus.TO_LEG_UNANSWERED: "customer_unanswered",
        CallStatus.FROM_LEG_CANCELLED: "agent_canceled",
        CallStatus.FROM_LEG_NO_DIAL: "agent_no_dial",
        CallStatus.TO_LEG_NO_DIAL: "customer_no_dial",
    }
