"""FakeExponea over real HTTP (stdlib clients only): API emulation, auth, faults, lifecycle."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tracker_agent.testing import FakeExponea, RecordedRequest
from tracker_agent.testing.faults import CAPTIVE_PORTAL_URL

TOKEN = "test-project"
TRACK = f"/track/v2/projects/{TOKEN}"
DATA = f"/data/v2/projects/{TOKEN}"
BASIC = "Basic " + base64.b64encode(b"key-id:secret").decode()
TIMEOUT_SECONDS = 5
ANN = {"customer_ids": {"registered": "ann"}}


class Answer:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = {name.lower(): value for name, value in response.getheaders()}
        self.raw = response.read()

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


def send(
    fake: FakeExponea,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: str | None = BASIC,
    raw: bytes | None = None,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = TIMEOUT_SECONDS,
) -> Answer:
    """One request; a fresh connection unless `conn` is given."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
    own = conn is None
    connection = conn or http.client.HTTPConnection(fake.host, fake.port, timeout=timeout)
    try:
        connection.request(method, path, body=payload, headers=headers)
        return Answer(connection.getresponse())
    finally:
        if own:
            connection.close()


def event(customer: str = "ann", event_type: str = "purchase", ts: float = 1000.5, **props: Any):
    return {
        "customer_ids": {"registered": customer},
        "event_type": event_type,
        "timestamp": ts,
        "properties": props,
    }


def command(name: str, data: Any = None, command_id: str | None = None) -> dict[str, Any]:
    cmd: dict[str, Any] = {"name": name}
    if data is not None:
        cmd["data"] = data
    if command_id is not None:
        cmd["command_id"] = command_id
    return cmd


@pytest.fixture
def fake() -> Iterator[FakeExponea]:
    with FakeExponea(time=lambda: 5000.25) as server:
        yield server


# -- tracking ---------------------------------------------------------------------------------


def test_single_event_is_acknowledged_and_stored(fake: FakeExponea) -> None:
    answer = send(fake, "POST", f"{TRACK}/customers/events", event(price=9.5))
    assert (answer.status, answer.json) == (200, {"success": True, "errors": []})
    assert fake.events == [event(price=9.5)]
    assert fake.requests[0].command_count == 1


def test_event_without_timestamp_gets_server_time(fake: FakeExponea) -> None:
    body = {"customer_ids": {"registered": "ann"}, "event_type": "visit", "timestamp": None}
    assert send(fake, "POST", f"{TRACK}/customers/events", body).status == 200
    assert fake.events[0]["timestamp"] == 5000.25
    assert fake.events[0]["properties"] == {}


def test_batch_answers_each_command_in_order_and_echoes_command_id(fake: FakeExponea) -> None:
    commands = [
        command("customers/events", event(), "c1"),
        command("customers/events", {"customer_ids": {"registered": "x"}}, "c2"),
        command("customers", {"properties": {"a": 1}}, "c3"),
        command("system/time", command_id="c4"),
        command("customers", {"customer_ids": {"registered": "ann"}, "properties": {"a": 1}}),
        command("no/such", {}, "c6"),
    ]
    answer = send(fake, "POST", f"{TRACK}/batch", {"commands": commands})
    assert answer.status == 200
    assert answer.json["success"] is True
    assert answer.json["results"] == [
        {"success": True, "command_id": "c1"},
        {"success": False, "errors": ["event_type is required"], "command_id": "c2"},
        {"success": False, "errors": ["customer_ids is required"], "command_id": "c3"},
        {"success": True, "time": 5000.25, "command_id": "c4"},
        {"success": True},
        {"success": False, "errors": ["unknown command name: 'no/such'"], "command_id": "c6"},
    ]
    assert len(fake.events) == 1
    assert fake.customer_updates == [
        {"customer_ids": {"registered": "ann"}, "properties": {"a": 1}, "update_timestamp": None}
    ]
    assert fake.batches == [commands]
    assert fake.requests[0].command_count == 6


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"event_type": "x"}, "customer_ids is required"),
        ({"customer_ids": {}, "event_type": "x"}, "customer_ids must be a non-empty object"),
        (ANN, "event_type is required"),
        ({**ANN, "event_type": ""}, "event_type must be a non-empty string"),
        ({**ANN, "event_type": "x", "timestamp": "now"}, "timestamp must be a number"),
        ({**ANN, "event_type": "x", "properties": [1]}, "properties must be an object"),
        (
            {**ANN, "event_type": "x", "properties": {"big": "x" * 20000}},
            "property big is too large",
        ),
    ],
)
def test_invalid_single_event_answers_400_with_reason(
    fake: FakeExponea, body: dict[str, Any], error: str
) -> None:
    answer = send(fake, "POST", f"{TRACK}/customers/events", body)
    assert (answer.status, answer.json) == (400, {"success": False, "errors": [error]})
    assert fake.events == []


def test_identical_event_is_acknowledged_but_stored_once(fake: FakeExponea) -> None:
    for _ in range(2):
        assert send(fake, "POST", f"{TRACK}/customers/events", event(n=1)).status == 200
    send(fake, "POST", f"{TRACK}/customers/events", event(ts=1000.500001, n=1))
    assert [e["timestamp"] for e in fake.events] == [1000.5, 1000.500001]
    assert fake.duplicate_events == 1
    assert len(fake.received_events) == 3


def test_consent_events_are_not_deduplicated(fake: FakeExponea) -> None:
    consent = event(event_type="consent", category="news", action="accept")
    for _ in range(2):
        send(fake, "POST", f"{TRACK}/customers/events", consent)
    assert len(fake.events) == 2
    assert fake.duplicate_events == 0


def test_older_customer_update_does_not_overwrite_newer_value(fake: FakeExponea) -> None:
    ids = {"registered": "ann"}
    newer = {"customer_ids": ids, "properties": {"tier": "gold"}, "update_timestamp": 20.0}
    older = {
        "customer_ids": ids,
        "properties": {"tier": "free", "age": 3},
        "update_timestamp": 10.0,
    }
    assert send(fake, "POST", f"{TRACK}/customers", newer).status == 200
    assert send(fake, "POST", f"{TRACK}/customers", older).status == 200
    assert fake.customers == [{"ids": ids, "properties": {"tier": "gold", "age": 3}}]
    assert [u["update_timestamp"] for u in fake.customer_updates] == [20.0, 10.0]


# -- authentication ---------------------------------------------------------------------------


def test_public_token_is_accepted_on_tracking_but_not_on_data(fake: FakeExponea) -> None:
    token = "Token public-key"
    assert send(fake, "POST", f"{TRACK}/customers/events", event(), auth=token).status == 200
    answer = send(fake, "POST", f"{DATA}/customers/export-one", event(), auth=token)
    assert (answer.status, answer.json) == (
        401,
        {"success": False, "errors": ["Could not authenticate"]},
    )


@pytest.mark.parametrize(
    "auth",
    [None, "Basic " + base64.b64encode(b"key-id:wrong").decode(), "Token nope", "Basic !!"],
)
def test_wrong_or_missing_credentials_answer_401(fake: FakeExponea, auth: str | None) -> None:
    answer = send(fake, "POST", f"{TRACK}/customers/events", event(), auth=auth)
    assert (answer.status, answer.json["errors"]) == (401, ["Could not authenticate"])
    assert fake.events == []


def test_system_time_answers_without_credentials(fake: FakeExponea) -> None:
    answer = send(fake, "GET", f"{TRACK}/system/time", auth=None)
    assert (answer.status, answer.json) == (200, {"success": True, "errors": [], "time": 5000.25})


def test_revoked_credentials_answer_401_until_restored(fake: FakeExponea) -> None:
    fake.revoke_credentials()
    assert send(fake, "POST", f"{TRACK}/batch", {"commands": []}).status == 401
    assert send(fake, "GET", f"{TRACK}/system/time").status == 200
    fake.restore_credentials()
    assert send(fake, "POST", f"{TRACK}/batch", {"commands": []}).status == 200


def test_unknown_project_token_answers_400_invalid_project_id(fake: FakeExponea) -> None:
    for path in ("/track/v2/projects/other/batch", "/data/v2/projects/other/customers/export"):
        answer = send(fake, "POST", path, {"commands": [], "format": "native_json"})
        assert (answer.status, answer.json) == (
            400,
            {"success": False, "errors": ["Invalid project id"]},
        )


def test_non_json_or_non_object_body_answers_400(fake: FakeExponea) -> None:
    for raw in (b"not json", b"[1, 2]", b"", b'{"a": NaN}'):
        answer = send(fake, "POST", f"{TRACK}/batch", raw=raw)
        assert answer.status == 400
        assert answer.json == {"success": False, "errors": ["Request body must be a JSON object"]}
    assert fake.requests[0].json is None and fake.requests[0].body == b"not json"


def test_unknown_path_answers_404_and_wrong_method_405(fake: FakeExponea) -> None:
    assert send(fake, "POST", f"{TRACK}/nothing", {}).status == 404
    assert send(fake, "GET", f"{TRACK}/batch").status == 405


# -- faults -----------------------------------------------------------------------------------


def test_fail_next_answers_status_and_retry_after_then_recovers(fake: FakeExponea) -> None:
    fake.fail_next(2, status=429, retry_after=3)
    for _ in range(2):
        answer = send(fake, "POST", f"{TRACK}/customers/events", event())
        assert (answer.status, answer.headers["retry-after"]) == (429, "3")
        assert answer.json == {"success": False, "errors": ["injected"]}
    assert fake.events == []
    assert fake.pending_faults == 0
    assert send(fake, "POST", f"{TRACK}/customers/events", event()).status == 200
    assert [r.status for r in fake.requests] == [429, 429, 200]


def test_fail_next_with_raw_body_and_path_filter(fake: FakeExponea) -> None:
    fake.fail_next(status=502, body="<html>bad gateway</html>", path_contains="/batch")
    assert send(fake, "GET", f"{TRACK}/system/time").status == 200
    answer = send(fake, "POST", f"{TRACK}/batch", {"commands": []})
    assert (answer.status, answer.raw) == (502, b"<html>bad gateway</html>")
    assert answer.headers["content-type"].startswith("text/plain")


def test_drop_next_closes_connection_without_answer(fake: FakeExponea) -> None:
    fake.drop_next()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        send(fake, "POST", f"{TRACK}/customers/events", event())
    assert fake.events == []
    assert fake.requests[0].status is None
    assert send(fake, "POST", f"{TRACK}/customers/events", event()).status == 200


def test_delay_next_and_latency_delay_the_answer(fake: FakeExponea) -> None:
    fake.delay_next(seconds=0.2)
    started = time.monotonic()
    assert send(fake, "GET", f"{TRACK}/system/time").status == 200
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    send(fake, "GET", f"{TRACK}/system/time")
    assert time.monotonic() - started < 0.2
    fake.latency = 0.1
    started = time.monotonic()
    send(fake, "GET", f"{TRACK}/system/time")
    assert time.monotonic() - started >= 0.1


def test_delayed_request_is_not_applied_when_the_client_gave_up(fake: FakeExponea) -> None:
    fake.delay_next(seconds=0.3)
    with pytest.raises(TimeoutError):
        send(fake, "POST", f"{TRACK}/customers/events", event(), timeout=0.1)
    time.sleep(0.35)  # past the delay: the server has seen the client hang up
    assert fake.events == [] and fake.requests[0].status is None
    assert send(fake, "POST", f"{TRACK}/customers/events", event()).status == 200
    assert (len(fake.events), fake.duplicate_events) == (1, 0)


def test_delay_with_apply_first_acts_although_the_client_timed_out(fake: FakeExponea) -> None:
    fake.delay_next(seconds=0.3, apply_first=True)
    with pytest.raises(TimeoutError):
        send(fake, "POST", f"{TRACK}/customers/events", event(), timeout=0.1)
    assert len(fake.events) == 1
    assert send(fake, "POST", f"{TRACK}/customers/events", event()).status == 200
    assert (len(fake.events), fake.duplicate_events) == (1, 1)


def test_captive_portal_answers_html_or_redirects_and_applies_nothing(fake: FakeExponea) -> None:
    fake.captive_portal_next()
    fake.captive_portal_next(redirect=True)
    page = send(fake, "POST", f"{TRACK}/customers/events", event())
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"<html>" in page.raw
    moved = send(fake, "POST", f"{TRACK}/customers/events", event())
    assert moved.status == 302 and moved.headers["location"] == CAPTIVE_PORTAL_URL
    assert fake.events == []
    assert [(r.status, r.processed) for r in fake.requests] == [(200, False), (302, False)]


def test_fail_next_content_type_overrides_the_raw_body_type(fake: FakeExponea) -> None:
    fake.fail_next(status=200, body='{"success": tr', content_type="application/json")
    answer = send(fake, "POST", f"{TRACK}/batch", {"commands": []})
    assert (answer.raw, answer.headers["content-type"]) == (b'{"success": tr', "application/json")


@pytest.mark.parametrize("headers_first", [False, True])
def test_trickle_next_writes_the_answer_byte_by_byte_and_applies_nothing(
    fake: FakeExponea, headers_first: bool
) -> None:
    interval = 0.01
    fake.trickle_next(interval=interval, status=503, body="slow", headers_first=headers_first)
    started = time.monotonic()
    answer = send(fake, "POST", f"{TRACK}/customers/events", event())
    took = time.monotonic() - started
    assert (answer.status, answer.raw) == (503, b"slow")
    # The answer is complete after its last byte: one pause fewer than bytes (4 in "slow").
    assert took >= (3 if headers_first else 40) * interval
    assert fake.events == [] and fake.requests[0].processed is False
    assert fake.requests[0].hung_up_at is None


def test_trickle_next_notes_when_the_client_hangs_up(fake: FakeExponea) -> None:
    fake.trickle_next(interval=0.5)
    with pytest.raises(TimeoutError):  # the second byte comes after the client's timeout
        send(fake, "GET", f"{TRACK}/system/time", timeout=0.3)
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while fake.requests[0].hung_up_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    hung_up_at = fake.requests[0].hung_up_at
    assert hung_up_at is not None and hung_up_at - fake.requests[0].received_at < 1.5


@pytest.mark.parametrize("declare_length", [True, False])
def test_oversize_next_sends_a_body_of_the_asked_size(
    fake: FakeExponea, declare_length: bool
) -> None:
    fake.oversize_next(size=100_000, declare_length=declare_length)
    answer = send(fake, "POST", f"{TRACK}/batch", {"commands": [command("system/time")]})
    assert answer.status == 200 and len(answer.raw) == 100_000
    assert answer.json["results"] == []
    assert ("content-length" in answer.headers) is declare_length
    assert fake.requests[0].processed is False


def test_mangle_results_next_applies_the_batch_but_answers_fewer_results(
    fake: FakeExponea,
) -> None:
    commands = [command("customers/events", event(ts=1000.5 + i), f"c{i}") for i in range(3)]
    fake.mangle_results_next(keep=1)
    answer = send(fake, "POST", f"{TRACK}/batch", {"commands": commands})
    assert answer.status == 200
    assert answer.json["results"] == [{"success": True, "command_id": "c0"}]
    assert len(fake.events) == 3 and fake.requests[0].processed is True
    assert len(send(fake, "POST", f"{TRACK}/batch", {"commands": commands}).json["results"]) == 3
    assert fake.duplicate_events == 3
    with pytest.raises(ValueError):
        fake.mangle_results_next(keep=-1)


def test_processed_tells_handled_requests_from_faulted_ones(fake: FakeExponea) -> None:
    fake.fail_next(status=503)
    fake.drop_next()
    send(fake, "POST", f"{TRACK}/customers/events", event())
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        send(fake, "POST", f"{TRACK}/customers/events", event())
    send(fake, "POST", f"{TRACK}/customers/events", event(), auth=None)  # refused: handled
    send(fake, "POST", f"{TRACK}/customers/events", event())
    assert [(r.status, r.processed) for r in fake.requests] == [
        (503, False),
        (None, False),
        (401, True),
        (200, True),
    ]


def test_clear_faults_ends_a_fault_mode_and_keeps_data(fake: FakeExponea) -> None:
    assert send(fake, "POST", f"{TRACK}/customers/events", event()).status == 200
    fake.fail_next(n=1000, status=503, path_contains="/batch")
    fake.drop_next(n=5)
    for _ in range(3):  # a mode: every batch fails while it lasts
        assert send(fake, "POST", f"{TRACK}/batch", {"commands": []}).status == 503
    assert fake.clear_faults() == 997 + 5
    assert (fake.pending_faults, fake.clear_faults()) == (0, 0)
    assert send(fake, "POST", f"{TRACK}/batch", {"commands": []}).status == 200
    assert len(fake.events) == 1 and len(fake.requests) == 5


def test_request_waiting_across_reset_is_dropped(fake: FakeExponea) -> None:
    fake.delay_next(seconds=0.2)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            send(fake, "POST", f"{TRACK}/customers/events", event())
        except (http.client.HTTPException, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.005)
    fake.reset()
    thread.join(TIMEOUT_SECONDS)
    assert len(errors) == 1
    assert fake.events == []


def test_reject_commands_fails_only_matching_commands(fake: FakeExponea) -> None:
    fake.reject_commands(lambda c: c["data"].get("event_type") == "poison", error="bad event")
    batch = [
        command("customers/events", event(), "ok"),
        command("customers/events", event(event_type="poison"), "p"),
    ]
    answer = send(fake, "POST", f"{TRACK}/batch", {"commands": batch})
    assert answer.json["results"] == [
        {"success": True, "command_id": "ok"},
        {"success": False, "errors": ["bad event"], "command_id": "p"},
    ]
    single = send(fake, "POST", f"{TRACK}/customers/events", event(event_type="poison"))
    assert (single.status, single.json["errors"]) == (400, ["bad event"])
    fake.reject_commands(None)
    assert send(fake, "POST", f"{TRACK}/customers/events", event(event_type="poison")).status == 200


def test_reject_batches_containing_refuses_whole_batch(fake: FakeExponea) -> None:
    fake.reject_batches_containing(lambda c: c.get("command_id") == "bad", error="nope")
    batch = [
        command("customers/events", event(), "good"),
        command("customers/events", event(ts=2), "bad"),
    ]
    answer = send(fake, "POST", f"{TRACK}/batch", {"commands": batch})
    assert (answer.status, answer.json) == (400, {"success": False, "errors": ["nope"]})
    assert fake.events == []
    assert send(fake, "POST", f"{TRACK}/batch", {"commands": batch[:1]}).status == 200
    assert len(fake.events) == 1


def test_batch_over_max_commands_is_refused(fake: FakeExponea) -> None:
    batch = [command("customers/events", event(ts=i)) for i in range(51)]
    answer = send(fake, "POST", f"{TRACK}/batch", {"commands": batch})
    assert (answer.status, answer.json["errors"]) == (400, ["too many commands"])
    assert fake.events == []
    assert send(fake, "POST", f"{TRACK}/batch", {"commands": batch[:50]}).status == 200
    fake.max_batch_commands = 2
    assert send(fake, "POST", f"{TRACK}/batch", {"commands": batch[:3]}).status == 400


# -- customer data ----------------------------------------------------------------------------


def test_tracked_data_reads_back_through_export_one_events_and_attributes(
    fake: FakeExponea,
) -> None:
    ids = {"registered": "ann", "cookie": "c-1"}
    send(fake, "POST", f"{TRACK}/customers", {"customer_ids": ids, "properties": {"name": "Ann"}})
    send(fake, "POST", f"{TRACK}/customers/events", event(ts=20, item="b"))
    send(fake, "POST", f"{TRACK}/customers/events", event(ts=10, item="a"))
    send(
        fake,
        "POST",
        f"{TRACK}/customers/events",
        event("ann", "consent", 5, category="news", action="accept"),
    )
    send(
        fake,
        "POST",
        f"{TRACK}/customers/events",
        event("ann", "consent", 6, category="sms", action="reject"),
    )

    one = send(fake, "POST", f"{DATA}/customers/export-one", {"customer_ids": {"cookie": "c-1"}})
    assert one.json["ids"] == ids
    assert one.json["properties"] == {"name": "Ann"}
    assert [(e["type"], e["timestamp"]) for e in one.json["events"]] == [
        ("consent", 5),
        ("consent", 6),
        ("purchase", 10),
        ("purchase", 20),
    ]

    events = send(fake, "POST", f"{DATA}/customers/events", {**ANN, "event_types": ["purchase"]})
    assert events.json["data"] == [
        {"type": "purchase", "timestamp": 10, "properties": {"item": "a"}},
        {"type": "purchase", "timestamp": 20, "properties": {"item": "b"}},
    ]

    fake.attribute_values[("segmentation", "seg-1")] = "vip"
    attributes = [
        {"type": "property", "property": "name"},
        {"type": "id", "id": "cookie"},
        {"type": "consent", "category": "news"},
        {"type": "consent", "category": "sms"},
        {"type": "segmentation", "id": "seg-1"},
        {"type": "aggregate", "id": "unset"},
        {"type": "bogus", "id": "x"},
    ]
    answer = send(fake, "POST", f"{DATA}/customers/attributes", {**ANN, "attributes": attributes})
    assert answer.json["results"] == [
        {"success": True, "value": "Ann"},
        {"success": True, "value": "c-1"},
        {"success": True, "value": True},
        {"success": True, "value": False},
        {"success": True, "value": "vip"},
        {"success": True, "value": None},
        {"success": False, "errors": ["unknown attribute type: 'bogus'"]},
    ]


def test_denied_attribute_answers_success_false(fake: FakeExponea) -> None:
    fake.add_customer({"registered": "ann"}, {"name": "Ann"})
    fake.deny_attribute("property", "name")
    body = {**ANN, "attributes": [{"type": "property", "property": "name"}]}
    result = send(fake, "POST", f"{DATA}/customers/attributes", body).json["results"][0]
    assert result["success"] is False


def test_export_lists_customers_as_fields_and_rows(fake: FakeExponea) -> None:
    fake.add_customer({"registered": "ann"}, {"first_name": "Ann"})
    fake.add_customer({"registered": "bob", "cookie": "c"}, {"last_name": "B"})
    answer = send(fake, "POST", f"{DATA}/customers/export", {"format": "native_json"})
    assert answer.json == {
        "success": True,
        "fields": [
            {"type": "id", "id": "cookie"},
            {"type": "id", "id": "registered"},
            {"type": "property", "property": "first_name"},
            {"type": "property", "property": "last_name"},
        ],
        "data": [[None, "ann", "Ann", None], ["c", "bob", None, "B"]],
    }
    assert send(fake, "POST", f"{DATA}/customers/export", {"format": "csv"}).status == 400


def test_unknown_customer_answers_404_global_error(fake: FakeExponea) -> None:
    body = {"customer_ids": {"registered": "x"}}
    answer = send(fake, "POST", f"{DATA}/customers/export-one", body)
    assert (answer.status, answer.json) == (
        404,
        {"success": False, "errors": {"_global": ["Customer does not exist"]}},
    )
    assert send(fake, "POST", f"{DATA}/customers/export-one", {}).json["errors"] == [
        "customer_ids is required"
    ]


def test_anonymize_removes_the_customer(fake: FakeExponea) -> None:
    fake.add_customer({"registered": "ann"}, {"email": "a@example.com"})
    body = {"customer_ids": {"registered": "ann"}}
    assert send(fake, "POST", f"{DATA}/customers/anonymize", body).json == {"success": True}
    assert fake.customers == []
    assert send(fake, "POST", f"{DATA}/customers/export-one", body).status == 404


# -- catalogs and analyses --------------------------------------------------------------------


def test_catalog_crud_round_trip(fake: FakeExponea) -> None:
    fields = [{"name": "title"}, {"name": "price"}]
    created = send(fake, "POST", f"{DATA}/catalogs", {"name": "products", "fields": fields})
    cid = created.json["id"]
    base = f"{DATA}/catalogs/{cid}"
    got = send(fake, "GET", base).json
    assert got["data"]["name"] == "products"
    cup = {"properties": {"title": "Cup", "price": 3}}
    assert send(fake, "PUT", f"{base}/items/1", cup).json == {"success": True}
    patch = {"properties": {"price": 4}}
    assert send(fake, "POST", f"{base}/items/1/partial-update", patch).status == 200
    assert send(fake, "GET", f"{base}/items/1").json["data"] == {
        "catalog_id": cid,
        "item_id": "1",
        "properties": {"title": "Cup", "price": 4},
    }
    renamed = {"name": "goods", "fields": [{"name": "title"}, {"name": "price"}, {"name": "x"}]}
    assert send(fake, "PUT", base, renamed).status == 200
    assert send(fake, "PUT", base, {"name": "goods", "fields": [{"name": "title"}]}).status == 400
    assert fake.catalogs[cid]["name"] == "goods"
    assert send(fake, "DELETE", f"{base}/items/1").status == 200
    assert send(fake, "DELETE", f"{base}/items/1").status == 404
    assert send(fake, "POST", f"{base}/items/2/partial-update", {"properties": {}}).status == 404
    send(fake, "PUT", f"{base}/items/2", {"properties": {"title": "Pen"}})
    assert send(fake, "DELETE", f"{base}/items").status == 200
    assert fake.catalogs[cid]["items"] == {}
    assert send(fake, "DELETE", base).status == 200
    assert send(fake, "GET", base).status == 404
    nameless = send(fake, "POST", f"{DATA}/catalogs", {"fields": []})
    assert nameless.json["errors"] == ["name is required"]


def test_catalog_items_page_and_filter_like_the_api(fake: FakeExponea) -> None:
    items = {str(i): {"title": f"item {i}", "color": "red" if i % 2 else "blue"} for i in range(30)}
    cid = fake.add_catalog("products", ["title", "color"], items)
    page = send(fake, "GET", f"{DATA}/catalogs/{cid}/items").json
    assert (page["total"], page["matched"], page["limit"], page["skip"]) == (30, 30, 20, 0)
    assert page["data"][0] == {"catalog_id": cid, "item_id": "0", "properties": items["0"]}
    assert page["matched_limited"] is False
    query = "query=RED&field=color&skip=10&limit=3"
    red = send(fake, "GET", f"{DATA}/catalogs/{cid}/items?{query}").json
    assert red["matched"] == 15
    assert [item["item_id"] for item in red["data"]] == ["21", "23", "25"]
    assert send(fake, "GET", f"{DATA}/catalogs/{cid}/items?limit=abc").status == 400


def test_analyses_answer_the_table_set_by_the_test(fake: FakeExponea) -> None:
    fake.add_analysis("funnel", "f-1", "checkout", ["serie", "step 1 count"], [["Total", 2]])
    body = {"analysis_id": "f-1", "format": "table_json"}
    answer = send(fake, "POST", f"{DATA}/analyses/funnel", body)
    assert answer.json == {
        "success": True,
        "name": "checkout",
        "header": ["serie", "step 1 count"],
        "rows": [["Total", 2]],
    }
    assert send(fake, "POST", f"{DATA}/analyses/report", body).status == 404
    assert send(fake, "POST", f"{DATA}/analyses/funnel", {"analysis_id": "f-1"}).status == 400
    with pytest.raises(ValueError):
        fake.add_analysis("pie", "x", "n", [], [])


# -- log, reset, lifecycle --------------------------------------------------------------------


def test_request_log_keeps_headers_and_body_but_repr_hides_them(fake: FakeExponea) -> None:
    send(fake, "GET", f"{DATA}/catalogs?skip=1")
    recorded = fake.requests[0]
    assert isinstance(recorded, RecordedRequest)
    assert (recorded.method, recorded.path, recorded.query) == ("GET", f"{DATA}/catalogs", "skip=1")
    assert recorded.headers["Authorization"] == BASIC
    assert "secret" not in repr(recorded) and "Basic" not in repr(recorded)
    assert "secret" not in repr(fake)


def test_chunked_request_body_is_read_fully(fake: FakeExponea) -> None:
    body = json.dumps({"commands": [command("customers/events", event())]}).encode()
    conn = http.client.HTTPConnection(fake.host, fake.port, timeout=TIMEOUT_SECONDS)
    try:
        conn.request(
            "POST",
            f"{TRACK}/batch",
            body=iter([body[:10], body[10:]]),
            headers={"Authorization": BASIC},
            encode_chunked=True,
        )
        assert conn.getresponse().read() and len(fake.events) == 1
    finally:
        conn.close()


def test_keep_alive_connection_serves_many_requests_without_nagle_stalls(
    fake: FakeExponea,
) -> None:
    conn = http.client.HTTPConnection(fake.host, fake.port, timeout=TIMEOUT_SECONDS)
    try:
        started = time.monotonic()
        for i in range(30):
            answer = send(fake, "POST", f"{TRACK}/customers/events", event(ts=i), conn=conn)
            assert answer.status == 200
        assert time.monotonic() - started < 0.6  # ~40 ms per request with Nagle on
    finally:
        conn.close()
    assert len(fake.events) == 30


def test_reset_clears_state_faults_settings_and_log(fake: FakeExponea) -> None:
    send(fake, "POST", f"{TRACK}/customers/events", event())
    fake.add_catalog("c", ["a"])
    fake.fail_next(5)
    fake.latency = 1.0
    fake.max_batch_commands = 1
    fake.revoke_credentials()
    fake.reset()
    assert (fake.events, fake.requests, fake.catalogs, fake.customers) == ([], [], {}, [])
    assert (fake.pending_faults, fake.latency, fake.max_batch_commands) == (0, 0.0, 50)
    assert send(fake, "POST", f"{TRACK}/customers/events", event()).status == 200


def test_stop_frees_the_port_and_closes_kept_alive_connections() -> None:
    fake = FakeExponea().start()
    port = fake.port
    conn = http.client.HTTPConnection(fake.host, port, timeout=TIMEOUT_SECONDS)
    try:
        assert send(fake, "GET", f"{TRACK}/system/time", conn=conn).status == 200
        fake.stop()
        fake.stop()  # idempotent
        with pytest.raises((http.client.HTTPException, OSError)):
            send(fake, "GET", f"{TRACK}/system/time", conn=conn)
    finally:
        conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((fake.host, port), timeout=TIMEOUT_SECONDS).close()
    with FakeExponea(port=port) as other:
        assert send(other, "GET", f"{TRACK}/system/time").status == 200


def test_restart_keeps_port_and_state() -> None:
    with FakeExponea() as fake:
        send(fake, "POST", f"{TRACK}/customers/events", event())
        url = fake.url
        fake.stop()
        fake.start()
        assert fake.url == url
        assert send(fake, "POST", f"{TRACK}/customers/events", event(ts=2)).status == 200
        assert len(fake.events) == 2


def test_stop_does_not_wait_for_a_delayed_answer() -> None:
    fake = FakeExponea().start()
    fake.delay_next(seconds=30)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            send(fake, "GET", f"{TRACK}/system/time")
        except (http.client.HTTPException, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.monotonic()
    fake.stop()
    thread.join(TIMEOUT_SECONDS)
    assert time.monotonic() - started < 1.0
    assert len(errors) == 1
