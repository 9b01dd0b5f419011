"""Every leg-outcome combination gives exactly one terminal status; every leg transition is
checked against the table."""

from __future__ import annotations

import itertools

import pytest

from callbridge.domain.calls import (
    LEG_TRANSITIONS,
    MAX_DIGITS,
    CallStatus,
    IllegalTransition,
    LegOutcome,
    LegStatus,
    append_digits,
    check_leg_transition,
    derive_inbound_status,
    derive_outbound_status,
    leg_status_for_unanswered,
)

O_ = LegOutcome

EXPECTED_OUTBOUND: dict[tuple[LegOutcome, LegOutcome | None], CallStatus] = {}
for from_outcome, to_outcome in itertools.product(list(O_), [None, *O_]):
    if from_outcome is O_.FAILED:
        expected = CallStatus.FROM_LEG_NO_DIAL
    elif from_outcome is not O_.ANSWERED:
        expected = CallStatus.FROM_LEG_UNANSWERED
    elif to_outcome is None or to_outcome is O_.CANCELED:
        expected = CallStatus.FROM_LEG_CANCELLED
    elif to_outcome is O_.ANSWERED:
        expected = CallStatus.COMPLETED
    elif to_outcome is O_.FAILED:
        expected = CallStatus.TO_LEG_NO_DIAL
    else:
        expected = CallStatus.TO_LEG_UNANSWERED
    EXPECTED_OUTBOUND[(from_outcome, to_outcome)] = expected


@pytest.mark.parametrize(("outcomes", "status"), list(EXPECTED_OUTBOUND.items()))
def test_outbound_status_for_every_leg_outcome_pair(
    outcomes: tuple[LegOutcome, LegOutcome | None], status: CallStatus
) -> None:
    assert derive_outbound_status(*outcomes) is status


def test_outbound_table_covers_all_pairs() -> None:
    assert len(EXPECTED_OUTBOUND) == len(O_) * (len(O_) + 1)


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (O_.BUSY, CallStatus.FROM_LEG_UNANSWERED),
        (O_.NO_ANSWER, CallStatus.FROM_LEG_UNANSWERED),
        (O_.REJECTED, CallStatus.FROM_LEG_UNANSWERED),
        (O_.FAILED, CallStatus.FROM_LEG_NO_DIAL),
    ],
)
def test_leg1_not_answering_never_dials_leg2(outcome: LegOutcome, status: CallStatus) -> None:
    assert derive_outbound_status(outcome, None) is status


@pytest.mark.parametrize(
    ("agents", "customer_left", "status"),
    [
        ([], False, CallStatus.TO_LEG_NO_DIAL),
        ([], True, CallStatus.FROM_LEG_CANCELLED),
        ([O_.FAILED, O_.FAILED], False, CallStatus.TO_LEG_NO_DIAL),
        ([O_.NO_ANSWER], False, CallStatus.TO_LEG_UNANSWERED),
        ([O_.BUSY, O_.FAILED], False, CallStatus.TO_LEG_UNANSWERED),
        ([O_.REJECTED, O_.NO_ANSWER], True, CallStatus.FROM_LEG_CANCELLED),
        ([O_.NO_ANSWER, O_.ANSWERED], False, CallStatus.COMPLETED),
        ([O_.ANSWERED, O_.CANCELED], True, CallStatus.COMPLETED),
    ],
)
def test_inbound_status(agents: list[LegOutcome], customer_left: bool, status: CallStatus) -> None:
    assert derive_inbound_status(agents, customer_left) is status


@pytest.mark.parametrize(("current", "new"), list(itertools.product(LegStatus, LegStatus)))
def test_every_leg_transition_pair_follows_the_table(current: LegStatus, new: LegStatus) -> None:
    if new in LEG_TRANSITIONS[current]:
        assert check_leg_transition(current, new) is new
    else:
        with pytest.raises(IllegalTransition):
            check_leg_transition(current, new)


def test_final_statuses_have_no_way_out() -> None:
    for status in LegStatus:
        assert (LEG_TRANSITIONS[status] == frozenset()) is status.is_final


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (O_.BUSY, LegStatus.BUSY),
        (O_.REJECTED, LegStatus.BUSY),
        (O_.NO_ANSWER, LegStatus.NO_ANSWER),
        (O_.FAILED, LegStatus.FAILED),
        (O_.CANCELED, LegStatus.CANCELED),
    ],
)
def test_unanswered_leg_final_status(outcome: LegOutcome, status: LegStatus) -> None:
    assert leg_status_for_unanswered(outcome) is status


def test_append_digits_keeps_at_most_max_digits() -> None:
    assert append_digits(None, "12") == "12"
    assert append_digits("1" * (MAX_DIGITS - 1), "234") == "1" * (MAX_DIGITS - 1) + "2"
    assert append_digits("9" * MAX_DIGITS, "5") == "9" * MAX_DIGITS
