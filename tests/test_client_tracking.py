"""exponea.tracking against FakeExponea: the seed examples, batches, send_batch, validation."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import PASSWORD, TOKEN, USERNAME

from tracker_agent.api.tracking import MISSING_RESULT_ERROR
from tracker_agent.client import Exponea
from tracker_agent.exceptions import (
    BadRequestError,
    InvalidResponseError,
    ServerError,
    ValidationError,
    ValidationTypeError,
)
from tracker_agent.testing import FakeExponea

SEED_TIME = 1533663283.8943756
BATCH_PATH = f"/track/v2/projects/{TOKEN}/batch"


# --- seed examples -------------------------------------------------------------------------------


def test_seed_get_system_time_returns_the_server_time_as_float():
    with FakeExponea(
        project_token=TOKEN, username=USERNAME, password=PASSWORD, time=lambda: SEED_TIME
    ) as fake:
        with Exponea(TOKEN, username=USERNAME, password=PASSWORD, url=fake.url) as exponea:
            assert exponea.tracking.get_system_time(batch=False) == SEED_TIME


def test_seed_update_customer_properties_returns_true_and_updates_the_customer(exponea, fake):
    assert (
        exponea.tracking.update_customer_properties(
            {"registered": "test"}, {"first_name": "Lukas"}, batch=False
        )
        is True
    )
    assert fake.customer_updates == [
        {
            "customer_ids": {"registered": "test"},
            "properties": {"first_name": "Lukas"},
            "update_timestamp": None,
        }
    ]
    assert exponea.customer.get_customer({"registered": "test"})["properties"] == {
        "first_name": "Lukas"
    }


def test_seed_add_event_returns_true_and_tracks_the_event(exponea, fake):
    assert (
        exponea.tracking.add_event(
            {"registered": "test"},
            "event_type",
            properties={"property": "sample_property"},
            timestamp=1533663283,
            batch=False,
        )
        is True
    )
    assert fake.events == [
        {
            "customer_ids": {"registered": "test"},
            "event_type": "event_type",
            "timestamp": 1533663283.0,
            "properties": {"property": "sample_property"},
        }
    ]


def test_seed_batch_commands_returns_bools_and_the_time(exponea, fake):
    tracking = exponea.tracking
    result = tracking.batch_commands(
        [
            tracking.add_event(
                {"registered": "test"}, "event_type", properties={"property": "test"}, batch=True
            ),
            tracking.update_customer_properties(
                {"registered": "test"}, {"first_name": "Lukas"}, batch=True
            ),
            tracking.get_system_time(batch=True),
        ]
    )
    assert result[:2] == [True, True]
    assert isinstance(result[2], float)
    assert [e["event_type"] for e in fake.events] == ["event_type"]
    assert len(fake.batches) == 1


def test_batch_builders_return_command_dicts_without_sending(exponea, fake):
    tracking = exponea.tracking
    assert tracking.get_system_time(batch=True) == {"name": "system/time"}
    assert tracking.add_event({"registered": "t"}, "e", timestamp=5, batch=True) == {
        "name": "customers/events",
        "data": {
            "customer_ids": {"registered": "t"},
            "timestamp": 5.0,
            "properties": None,  # the seed SDK's shape: None for properties not given
            "event_type": "e",
        },
    }
    assert tracking.update_customer_properties({"registered": "t"}, {"a": 1}, batch=True) == {
        "name": "customers",
        "data": {"customer_ids": {"registered": "t"}, "properties": {"a": 1}},
    }
    assert fake.requests == []


# --- beyond the seed -----------------------------------------------------------------------------


def test_update_timestamp_is_sent_so_an_older_update_does_not_win(exponea, fake):
    ids = {"registered": "t"}
    exponea.tracking.update_customer_properties(ids, {"plan": "new"}, update_timestamp=200)
    exponea.tracking.update_customer_properties(ids, {"plan": "old"}, update_timestamp=100)
    assert fake.customer_updates[1]["update_timestamp"] == 100.0
    assert exponea.customer.get_customer(ids)["properties"] == {"plan": "new"}


def test_converted_properties_are_sent_as_plain_json(exponea, fake):
    when = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    exponea.tracking.add_event(
        {"registered": "t"}, "purchase", {"at": when, "day": when.date()}, timestamp=when
    )
    assert fake.events[0]["properties"] == {"at": 1577836800.0, "day": "2020-01-01"}
    assert fake.events[0]["timestamp"] == 1577836800.0


def test_batch_commands_sends_a_unique_command_id_with_every_command(exponea, fake):
    commands = [
        exponea.tracking.add_event({"registered": str(i)}, "e", batch=True) for i in range(5)
    ]
    exponea.tracking.batch_commands(commands)
    ids = [command["command_id"] for command in fake.batches[0]]
    assert len(set(ids)) == 5 and all(isinstance(i, str) and i for i in ids)
    assert all("command_id" not in command for command in commands)  # caller's dicts untouched


def test_batch_commands_splits_more_than_50_and_keeps_results_in_order(exponea, fake):
    fake.reject_commands(
        lambda command: command.get("data", {}).get("properties", {}).get("i") in (3, 75, 119)
    )
    commands = [
        exponea.tracking.add_event({"registered": "u"}, "e", {"i": i}, timestamp=i + 1, batch=True)
        for i in range(120)
    ]
    result = exponea.tracking.batch_commands(commands)
    assert [len(batch) for batch in fake.batches] == [50, 50, 20]
    assert result == [i not in (3, 75, 119) for i in range(120)]
    assert [e["properties"]["i"] for e in fake.events] == [
        i for i in range(120) if i not in (3, 75, 119)
    ]


def test_batch_commands_keeps_a_callers_command_id(exponea, fake):
    exponea.tracking.batch_commands([{"name": "system/time", "command_id": "mine"}])
    assert fake.batches[0] == [{"name": "system/time", "command_id": "mine"}]


def test_batch_commands_accepts_seed_style_raw_commands_with_none_values(exponea, fake):
    raw = {
        "name": "customers/events",
        "data": {
            "customer_ids": {"registered": "t"},
            "event_type": "e",
            "properties": None,
            "timestamp": None,
        },
    }
    assert exponea.tracking.batch_commands([raw]) == [True]
    assert fake.events[0]["properties"] == {}


def test_batch_commands_of_nothing_sends_nothing(exponea, fake):
    assert exponea.tracking.batch_commands([]) == []
    assert fake.requests == []


def test_batch_commands_validates_every_command_before_sending_any(exponea, fake):
    commands = [exponea.tracking.get_system_time(batch=True)] * 60
    commands.append({"name": "customers", "data": {"customer_ids": {}, "properties": {}}})
    with pytest.raises(ValidationError) as info:
        exponea.tracking.batch_commands(commands)
    assert info.value.field == "commands[60]['data']['customer_ids']"
    assert fake.requests == []


def test_batch_commands_refuses_duplicate_command_ids(exponea, fake):
    command = {"name": "system/time", "command_id": "same"}
    with pytest.raises(ValidationError):
        exponea.tracking.batch_commands([command, command])
    assert fake.requests == []


def test_batch_commands_raises_when_the_whole_batch_is_refused(exponea, fake):
    fake.reject_batches_containing(lambda command: True, status=400, error="bad command")
    with pytest.raises(BadRequestError) as info:
        exponea.tracking.batch_commands([exponea.tracking.get_system_time(batch=True)])
    assert info.value.errors == ["bad command"]


# --- send_batch (used by the outbox drain) ------------------------------------------------


def _commands(n: int) -> list[dict]:
    return [
        {
            "name": "customers/events",
            "command_id": f"c{i}",
            "data": {
                "customer_ids": {"registered": "d"},
                "event_type": "e",
                "properties": {"i": i},
                "timestamp": 1000.0 + i,
            },
        }
        for i in range(n)
    ]


def test_send_batch_posts_once_and_returns_aligned_results(exponea, fake):
    fake.reject_commands(lambda command: command["command_id"] == "c1", error="rejected")
    results = exponea.tracking.send_batch(_commands(3))
    assert results == [
        {"command_id": "c0", "success": True, "errors": []},
        {"command_id": "c1", "success": False, "errors": ["rejected"]},
        {"command_id": "c2", "success": True, "errors": []},
    ]
    assert [r.path for r in fake.requests] == [BATCH_PATH]
    assert fake.requests[0].json == {"commands": _commands(3)}


def test_send_batch_reports_time_results(exponea, fake):
    results = exponea.tracking.send_batch([{"name": "system/time", "command_id": "t"}])
    assert results[0]["success"] is True and isinstance(results[0]["time"], float)


def _answer(*results: dict) -> dict:
    return {"success": True, "results": list(results)}


def test_send_batch_matches_results_by_command_id_even_when_reordered(exponea, fake):
    fake.fail_next(
        status=200,
        body=_answer(
            {"success": True, "command_id": "c2"},
            {"success": False, "errors": ["late"], "command_id": "c1"},
            {"success": True, "command_id": "c0"},
        ),
    )
    results = exponea.tracking.send_batch(_commands(3))
    assert [(r["command_id"], r["success"]) for r in results] == [
        ("c0", True),
        ("c1", False),
        ("c2", True),
    ]
    assert results[1]["errors"] == ["late"]


@pytest.mark.parametrize(
    "results",
    [
        pytest.param([{"success": True}, {"success": False, "errors": ["x"]}], id="no-ids"),
        pytest.param(
            [{"success": False, "errors": ["late"], "command_id": "c1"}, {"success": True}],
            id="some-ids",
        ),
        pytest.param([], id="none"),
    ],
)
def test_send_batch_with_a_wrong_result_count_raises_a_retryable_invalid_response(
    exponea, fake, sleeps, results
):
    # Positions mean nothing when the count is wrong: no result may be taken as another's.
    fake.fail_next(status=200, body=_answer(*results))
    with pytest.raises(InvalidResponseError) as info:
        exponea.tracking.send_batch(_commands(3))
    assert info.value.retryable is True
    assert (info.value.status_code, info.value.path) == (200, BATCH_PATH)
    assert "results for 3 commands" in str(info.value)
    assert len(fake.requests) == 1 and sleeps == []  # a write: never retried by the client


def test_send_batch_accepts_a_wrong_result_count_when_every_command_echoes_its_id(exponea, fake):
    fake.fail_next(
        status=200,
        body=_answer(
            {"success": True, "command_id": "c1"},
            {"success": True, "command_id": "c0"},
            {"success": True, "command_id": "not-ours"},
        ),
    )
    results = exponea.tracking.send_batch(_commands(2))
    assert [(r["command_id"], r["success"]) for r in results] == [("c0", True), ("c1", True)]


def test_send_batch_marks_a_command_missing_when_its_slot_echoes_another_id(exponea, fake):
    fake.fail_next(
        status=200,
        body=_answer({"success": True, "command_id": "c0"}, {"success": True, "command_id": "c0"}),
    )
    first, second = exponea.tracking.send_batch(_commands(2))
    assert first["success"] is True
    assert second == {
        "command_id": "c1",
        "success": False,
        "errors": [MISSING_RESULT_ERROR],
        "missing": True,
    }


def test_send_batch_is_not_retried_and_raises_on_whole_request_failure(exponea, fake, sleeps):
    fake.fail_next(status=503, retry_after=1)
    with pytest.raises(ServerError) as info:
        exponea.tracking.send_batch(_commands(2))
    assert info.value.retry_after == 1.0
    assert len(fake.requests) == 1 and sleeps == []


@pytest.mark.parametrize(
    ("commands", "error"),
    [
        (_commands(51), ValidationError),
        ([], ValidationError),
        ("nope", ValidationTypeError),
        ([{"name": "customers/events", "data": {}}], ValidationError),  # no command_id
        ([{"name": "other", "command_id": "x"}], ValidationError),
        (_commands(1) * 2, ValidationError),  # duplicate command_id
        ([{**_commands(1)[0], "data": {"properties": {"x": float("nan")}}}], ValidationError),
    ],
)
def test_send_batch_refuses_unsendable_batches_without_a_request(exponea, fake, commands, error):
    with pytest.raises(error):
        exponea.tracking.send_batch(commands)
    assert fake.requests == []


# --- validation before any request ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda t: t.add_event({}, "e"), "customer_ids"),
        (lambda t: t.add_event({"registered": "a"}, ""), "event_type"),
        (lambda t: t.add_event({"registered": "a"}, "e", {"p": float("nan")}), "properties['p']"),
        (lambda t: t.add_event({"registered": "a"}, "e", {"p": object()}), "properties['p']"),
        (lambda t: t.add_event({"registered": "a"}, "e", timestamp=-5), "timestamp"),
        (lambda t: t.add_event({"registered": "a"}, "e", {"p": "x" * 20_000}), "properties['p']"),
        (
            lambda t: t.update_customer_properties({"registered": 1.5}, {}),
            "customer_ids['registered']",
        ),
        (lambda t: t.update_customer_properties({"registered": "a"}, None), "properties"),
        (
            lambda t: (
                t.add_event({"registered": "a"}, "e", {"p": "x"}, batch=True)
                and t.add_event({"registered": "a"}, "e", {1: "x"}, batch=True)
            ),
            "properties",
        ),
    ],
)
def test_bad_tracking_input_raises_naming_the_field_and_sends_nothing(exponea, fake, call, field):
    with pytest.raises(ValidationError) as info:
        call(exponea.tracking)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert fake.requests == []
