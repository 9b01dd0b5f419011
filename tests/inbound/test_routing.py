"""Pure routing: eligibility, the order each strategy offers calls in, dynamic-URL answers,
and flow definition parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from callbridge.domain.calls import LegStatus
from callbridge.domain.flows import (
    FlowInvalid,
    NoAgentAction,
    Strategy,
    flow_urls,
    parse_flow_definition,
)
from callbridge.domain.options import RecordingChannels
from callbridge.domain.routing import (
    Candidate,
    DynamicResponseInvalid,
    DynamicTarget,
    SkipReason,
    parse_dynamic_response,
    plan_attempts,
    skip_reason,
    skipped_leg_status,
)

NOW = datetime(2026, 1, 15, 6, 30, tzinfo=UTC)


def agent(n: int, **kw: object) -> Candidate:
    fields: dict[str, object] = {
        "key": f"u{n}",
        "contact_uri": f"+91990000000{n}",
        "position": n,
        "user_id": f"u{n}",
        "name": f"Agent {n}",
    }
    fields.update(kw)
    return Candidate(**fields)  # type: ignore[arg-type]


def keys(plan_ordered: tuple[Candidate, ...]) -> list[str]:
    return [c.key for c in plan_ordered]


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (agent(1), None),
        (agent(1, has_device=False), SkipReason.NO_DEVICE),
        (agent(1, available=False, busy=True), SkipReason.OFF),
        (agent(1, verified=False), SkipReason.UNVERIFIED),
        (agent(1, reachable=False, verified=False), SkipReason.UNREACHABLE),
        (agent(1, available=False, reachable=False), SkipReason.OFF),
        (agent(1, busy=True), SkipReason.BUSY),
        (agent(1, cooldown_until=NOW + timedelta(seconds=1)), SkipReason.COOLDOWN),
        (agent(1, cooldown_until=NOW), None),
        (Candidate(key="+9198", contact_uri="+9198", position=0, busy=True), SkipReason.BUSY),
        (
            Candidate(key="+9198", contact_uri="+9198", position=0, busy=True, state_managed=False),
            None,
        ),
    ],
)
def test_skip_reason(candidate: Candidate, reason: SkipReason | None) -> None:
    assert skip_reason(candidate, NOW) is reason


def test_skipped_leg_status_says_why() -> None:
    assert skipped_leg_status(SkipReason.BUSY) is LegStatus.BUSY
    assert skipped_leg_status(SkipReason.COOLDOWN) is LegStatus.BUSY
    assert skipped_leg_status(SkipReason.OFF) is LegStatus.FAILED
    assert skipped_leg_status(SkipReason.UNVERIFIED) is LegStatus.FAILED


def test_sequential_keeps_flow_order_and_leaves_out_tried_and_skipped() -> None:
    pool = [agent(3), agent(1), agent(2, busy=True), agent(4)]
    plan = plan_attempts(Strategy.SEQUENTIAL, pool, tried=frozenset({"u1"}), now=NOW)
    assert keys(plan.ordered) == ["u3", "u4"]
    assert not plan.ring_all
    assert [(c.key, r) for c, r in plan.skipped] == [("u2", SkipReason.BUSY)]


def test_simultaneous_rings_every_eligible_agent() -> None:
    plan = plan_attempts(
        Strategy.SIMULTANEOUS,
        [agent(1), agent(2, available=False), agent(3)],
        tried=frozenset(),
        now=NOW,
    )
    assert keys(plan.ordered) == ["u1", "u3"]
    assert plan.ring_all


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (None, ["u1", "u2", "u3"]),
        ("u1", ["u2", "u3", "u1"]),
        ("u3", ["u1", "u2", "u3"]),
        ("gone", ["u1", "u2", "u3"]),
    ],
)
def test_round_robin_starts_after_the_agent_last_offered(
    last: str | None, expected: list[str]
) -> None:
    pool = [agent(1), agent(2), agent(3)]
    plan = plan_attempts(Strategy.ROUND_ROBIN, pool, tried=frozenset(), now=NOW, last_offered=last)
    assert keys(plan.ordered) == expected


def test_round_robin_rotation_is_stable_when_the_next_agent_is_busy() -> None:
    pool = [agent(1), agent(2, busy=True), agent(3)]
    plan = plan_attempts(Strategy.ROUND_ROBIN, pool, tried=frozenset(), now=NOW, last_offered="u1")
    assert keys(plan.ordered) == ["u3", "u1"]


def test_longest_idle_prefers_never_called_then_oldest_call_end() -> None:
    pool = [
        agent(1, last_call_ended_at=NOW - timedelta(minutes=1)),
        agent(2, last_call_ended_at=NOW - timedelta(minutes=10)),
        agent(3),
        agent(4, last_call_ended_at=NOW - timedelta(minutes=5)),
        agent(5),
    ]
    plan = plan_attempts(Strategy.LONGEST_IDLE, pool, tried=frozenset(), now=NOW)
    assert keys(plan.ordered) == ["u3", "u5", "u2", "u4", "u1"]


def test_an_agent_listed_twice_is_offered_once() -> None:
    pool = [agent(1, group_id=7), agent(2), agent(1, position=9)]
    plan = plan_attempts(Strategy.SEQUENTIAL, pool, tried=frozenset(), now=NOW)
    assert keys(plan.ordered) == ["u1", "u2"]
    assert plan.ordered[0].group_id == 7


def test_dynamic_numbers_shape_with_options() -> None:
    route = parse_dynamic_response(
        {
            "fetch_after_attempt": "true",
            "destination": {
                "numbers": ["09900000001", "sip:a@pbx.example.com", "junk", "+919900000001"]
            },
            "record": True,
            "recording_channels": "dual",
            "max_ringing_duration": 25,
            "max_conversation_duration": "600",
            "parallel_ringing": {"activate": True},
        },
        "IN",
    )
    assert route.targets == (DynamicTarget("+919900000001"),)
    assert route.fetch_after_attempt
    assert route.record is True
    assert route.recording_channels is RecordingChannels.DUAL
    assert route.max_ringing_duration_s == 25
    assert route.max_conversation_duration_s == 600
    assert route.parallel


def test_dynamic_contact_uri_list_shapes() -> None:
    bare = parse_dynamic_response(
        [{"contact_uri": "sip:a@pbx.example.com", "state_management": "true"}, {"contact_uri": 5}],
        "IN",
    )
    assert bare.targets == (DynamicTarget("sip:a@pbx.example.com", True),)
    nested = parse_dynamic_response({"destination": [{"contact_uri": "+919900000002"}]}, "IN")
    assert nested.targets == (DynamicTarget("+919900000002", None),)
    assert nested.record is None and nested.max_ringing_duration_s is None
    empty = parse_dynamic_response({"destination": {"numbers": []}}, "IN")
    assert empty.targets == ()


@pytest.mark.parametrize(
    "answer", ["text", 5, {"destination": "x"}, {"destination": {"numbers": "x"}}]
)
def test_dynamic_answers_we_cannot_route_with(answer: object) -> None:
    with pytest.raises(DynamicResponseInvalid):
        parse_dynamic_response(answer, "IN")


def test_dynamic_out_of_range_options_are_ignored() -> None:
    route = parse_dynamic_response(
        {
            "destination": {"numbers": []},
            "max_ringing_duration": 0,
            "max_conversation_duration": True,
        },
        "IN",
    )
    assert route.max_ringing_duration_s is None
    assert route.max_conversation_duration_s is None


def test_flow_definition_round_trips_and_lists_urls() -> None:
    flow = parse_flow_definition(
        {
            "connect": {
                "destinations": [{"user_id": "u1"}, {"group_id": 2}],
                "strategy": "simultaneous",
                "url": "https://crm.example.com/route",
            },
            "no_agent": {"action": "queue", "message_url": "https://cdn.example.com/m.wav"},
            "status_callback": [
                {"event": "terminal", "url": "https://crm.example.com/cb", "method": "get"}
            ],
        }
    )
    assert flow.is_dynamic
    assert flow.connect.strategy is Strategy.SIMULTANEOUS
    assert flow.no_agent.action is NoAgentAction.QUEUE
    assert parse_flow_definition(flow.to_json()) == flow
    assert [name for name, _ in flow_urls(flow)] == [
        "connect.url",
        "no_agent.message_url",
        "status_callback[0].url",
    ]


def test_flow_definition_errors_name_the_field() -> None:
    with pytest.raises(FlowInvalid, match=r"connect.destinations.0"):
        parse_flow_definition({"connect": {"destinations": [{"user_id": "a", "group_id": 1}]}})
    with pytest.raises(FlowInvalid, match=r"no_agent.max_wait_s"):
        parse_flow_definition({"no_agent": {"max_wait_s": 0}})
