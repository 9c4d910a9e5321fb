"""Pure policy of the client: retry delays, Retry-After, response -> exception table."""

from __future__ import annotations

import email.utils

import pytest

from tracker_agent.api.tracking import MISSING_RESULT_ERROR, align_batch_results
from tracker_agent.constants import READ_MAX_RETRY_AFTER_SECONDS as MAX_RETRY_AFTER_SECONDS
from tracker_agent.constants import READ_RETRY_CAP_SECONDS as RETRY_CAP_SECONDS
from tracker_agent.exceptions import (
    APIException,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RequestTooLargeError,
    ServerError,
)
from tracker_agent.responses import parse_error_messages, parse_retry_after, translate_response
from tracker_agent.transport import read_retry_delay


@pytest.mark.parametrize(
    ("attempt", "retry_after", "rng_value", "expected"),
    [
        (1, None, 1.0, 0.5),
        (2, None, 1.0, 1.0),
        (3, None, 1.0, 2.0),
        (3, None, 0.5, 1.0),
        (3, None, 0.0, 0.0),
        (5, None, 1.0, 8.0),
        (6, None, 1.0, RETRY_CAP_SECONDS),
        (10_000, None, 1.0, RETRY_CAP_SECONDS),
        (1, 3.0, 0.0, 3.0),  # Retry-After is a floor, as in the drain
        (1, 0.2, 1.0, 0.5),  # ... never a ceiling
        (4, 0.0, 1.0, 4.0),
        (1, 7200.0, 1.0, MAX_RETRY_AFTER_SECONDS),  # a waiting caller: at most a minute
        (1, -5.0, 1.0, 0.5),
    ],
)
def test_read_retry_delay_table(attempt, retry_after, rng_value, expected):
    assert read_retry_delay(attempt, retry_after, lambda: rng_value) == pytest.approx(expected)


def test_read_retry_delay_attempt_is_one_based():
    with pytest.raises(ValueError):
        read_retry_delay(0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("nan", None),
        ("soon", None),
        (email.utils.formatdate(1_000_030, usegmt=True), 30.0),
        (email.utils.formatdate(999_000, usegmt=True), 0.0),
    ],
)
def test_parse_retry_after_seconds_and_http_dates(header, expected):
    assert parse_retry_after(header, now=1_000_000.0) == expected


@pytest.mark.parametrize(
    ("body", "messages"),
    [
        ({"success": False, "error": "bad token"}, ["bad token"]),
        ({"success": False, "errors": ["one", "two"]}, ["one", "two"]),
        (
            {"errors": {"_global": ["g"], "price": ["must be a number"]}},
            ["g", "price: must be a number"],
        ),
        ({"message": "Internal error"}, ["Internal error"]),
        ({"success": False}, []),
        (["not", "a", "dict"], []),
        (None, []),
    ],
)
def test_parse_error_messages_reads_all_four_body_shapes(body, messages):
    assert parse_error_messages(body) == messages


@pytest.mark.parametrize(
    ("status", "body", "cls", "retryable"),
    [
        (400, b'{"success":false,"errors":["bad event"]}', BadRequestError, False),
        (400, b'{"success":false,"errors":["Could not authenticate"]}', AuthenticationError, False),
        (400, b'{"success":false,"error":"Invalid project id"}', AuthenticationError, False),
        (200, b'{"success":false,"errors":["nope"]}', BadRequestError, False),
        (401, b'{"success":false,"errors":["Could not authenticate"]}', AuthenticationError, False),
        (403, b'{"message":"forbidden"}', PermissionDeniedError, False),
        (404, b'{"error":"not found"}', NotFoundError, False),
        (408, b"", APITimeoutError, True),
        (413, b'{"errors":["too big"]}', RequestTooLargeError, False),
        (413, b"<html>413 Request Entity Too Large</html>", InvalidResponseError, True),
        (422, b'{"errors":["x"]}', BadRequestError, False),
        (429, b'{"errors":["rate"]}', RateLimitedError, True),
        (500, b'{"errors":{"_global":["boom"]}}', ServerError, True),
        (502, b"<html>Bad gateway</html>", ServerError, True),
        # An answer we cannot read is a network fault: retryable (DESIGN.md, issue 9).
        (200, b"<html>captive portal</html>", InvalidResponseError, True),
        (200, b"[1, 2]", InvalidResponseError, True),
        (200, b"", InvalidResponseError, True),
        (302, b"", InvalidResponseError, True),
        (400, b"<html>400 Bad Request</html>", InvalidResponseError, True),
    ],
)
def test_translate_response_status_table(status, body, cls, retryable):
    with pytest.raises(APIException) as info:
        translate_response("POST", "/track/v2/projects/p/batch", status, body, "2")
    exc = info.value
    assert type(exc) is cls
    assert exc.retryable is retryable
    assert exc.status_code == status
    assert (exc.method, exc.path) == ("POST", "/track/v2/projects/p/batch")
    assert exc.retry_after == (None if cls is InvalidResponseError and status < 300 else 2.0)


def test_translate_response_returns_the_json_object_on_success():
    body = translate_response("GET", "/x", 200, b'{"success": true, "time": 1.5}')
    assert body == {"success": True, "time": 1.5}


def test_translate_response_checks_required_keys():
    with pytest.raises(InvalidResponseError, match="'time'"):
        translate_response("GET", "/x", 200, b'{"success": true}', require={"time": float})
    with pytest.raises(InvalidResponseError):  # bool is not a number here
        translate_response("GET", "/x", 200, b'{"time": true}', require={"time": (int, float)})


def test_non_json_answer_shows_status_and_a_short_snippet():
    page = b"<html><body>" + b"Service temporarily unavailable " * 50 + b"</body></html>"
    with pytest.raises(InvalidResponseError) as info:
        translate_response("GET", "/x", 200, page)
    text = str(info.value)
    assert info.value.context == "GET /x HTTP 200" and "<html><body>Service temporarily" in text
    assert len(text) < 300
    with pytest.raises(ServerError) as info2:
        translate_response("GET", "/x", 503, page)
    assert info2.value.context == "GET /x HTTP 503" and "non-JSON answer" in str(info2.value)


def test_error_messages_are_carried_as_data():
    with pytest.raises(BadRequestError) as info:
        translate_response("POST", "/p", 400, b'{"errors":{"_global":["a"],"f":["b"]}}')
    assert info.value.errors == ["a", "f: b"]
    assert str(info.value) == "a; f: b"  # the server's text alone, as in the seed SDK
    assert info.value.context == "POST /p HTTP 400"


def test_align_batch_results_by_echoed_command_id_whatever_the_order():
    results = [
        {"success": True, "command_id": "b", "time": 5},
        {"success": False, "errors": ["bad"], "command_id": "a"},
    ]
    assert align_batch_results(["a", "b"], results) == [
        {"command_id": "a", "success": False, "errors": ["bad"]},
        {"command_id": "b", "success": True, "errors": [], "time": 5.0},
    ]


def test_align_batch_results_falls_back_to_position_and_marks_missing_results():
    aligned = align_batch_results(["a", "b", "c"], [{"success": True}, "junk"])
    assert [r["success"] for r in aligned] == [True, False, False]
    assert aligned[1]["errors"] == aligned[2]["errors"] == [MISSING_RESULT_ERROR]
    assert aligned[1]["missing"] is aligned[2]["missing"] is True
    assert "missing" not in aligned[0]


def test_align_batch_results_never_takes_another_commands_result_by_position():
    aligned = align_batch_results(["a", "b"], [{"success": True, "command_id": "b"}])
    assert aligned[0] == {
        "command_id": "a",
        "success": False,
        "errors": [MISSING_RESULT_ERROR],
        "missing": True,
    }
    assert aligned[1]["success"] is True
