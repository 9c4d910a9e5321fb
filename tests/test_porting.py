"""Porting from exponea-python-sdk: its tests' way of faking the API (a patched requests.request
answering a minimal object), the batch builders' command shapes, and exception text."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import requests
from conftest import PASSWORD, TOKEN, USERNAME, make_agent
from requests.auth import HTTPBasicAuth

from tracker_agent import APIException, Exponea
from tracker_agent.exceptions import (
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    PatchedRequestsError,
    ValidationError,
)
from tracker_agent.testguard import requests_request_is_faked
from tracker_agent.testing.porting import requests_request_route

HERE = Path(__file__).resolve().parent
ORIGINAL_STYLE_SUITE = HERE / "test_porting_original_style.py"
THE_ONE_LINE = "from tracker_agent.testing.porting import route_requests_request  # noqa: F401\n"
README_SECTION = '"Porting your tests" in README.md'
#: Tests of the original-style suite that make no request (they pass with or without the line).
NO_REQUEST_TESTS = {"test_batch_builders_return_the_original_commands"}
SUBPROCESS_TIMEOUT_SECONDS = 120
SDK_TIMEOUT_SECONDS = 10.0  # exponea-python-sdk's default request_timeout, and ours
SEED_TIME = 1533663283.8943756

#: A conftest for a throwaway pytest run: every connection or name lookup is refused and
#: logged (with the test that tried it) to $NETWORK_LOG.
TRIPWIRE_CONFTEST = """
import os
import socket


def _refuse(*args, **kwargs):
    with open(os.environ["NETWORK_LOG"], "a") as log:
        log.write(os.environ.get("PYTEST_CURRENT_TEST", "?") + "\\n")
    raise OSError("network disabled by the test")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.getaddrinfo = _refuse
socket.create_connection = _refuse
"""

#: A control for the tripwire: an unpatched client really tries to connect (and is refused).
TRIPWIRE_CONTROL = """
import pytest

from tracker_agent import APIException, Exponea


def test_an_unpatched_client_tries_the_network():
    with pytest.raises(APIException):
        Exponea("test", read_retries=0).tracking.get_system_time()
"""


class MinimalResponse:
    """What exponea-python-sdk's tests returned from their fake: status_code and text."""

    def __init__(self, data: object, status_code: int = 200) -> None:
        self.status_code = status_code
        self.text = json.dumps(data)


def answering(data: object, status_code: int = 200):
    return lambda *args, **kwargs: MinimalResponse(data, status_code)


def refuse_connections(*args, **kwargs):
    raise AssertionError("a connection was attempted")


@pytest.fixture
def no_network():
    """Any connect or name lookup fails the test."""
    with (
        mock.patch.object(socket.socket, "connect", refuse_connections),
        mock.patch.object(socket, "getaddrinfo", refuse_connections),
    ):
        yield


@pytest.fixture
def closed_port_client(sleeps):
    """A client on a loopback port nothing listens on: a request that got out is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Exponea("test", url=f"http://127.0.0.1:{port}", sleep=sleeps.append) as client:
        yield client


def run_pytest(directory: Path, *files: str) -> tuple[dict[str, str | None], list[str]]:
    """Run pytest on `files` in `directory` (with the tripwire conftest): each test's failure
    report (None when it passed), and the tests that tried the network."""
    (directory / "conftest.py").write_text(TRIPWIRE_CONFTEST)
    network_log = directory / "network.log"
    report = directory / "report.xml"
    env = {**os.environ, "NETWORK_LOG": str(network_log)}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
        + [f"--junitxml={report}", "--rootdir", str(directory), *files],
        cwd=directory,
        env=env,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    outcomes: dict[str, str | None] = {}
    for case in ET.parse(report).iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")  # a fixture that failed
        # The message attribute may be cut short; the element's text holds the whole report.
        text = None if failure is None else f"{failure.get('message')}\n{failure.text}"
        outcomes[case.get("name", "")] = text
    tried = network_log.read_text().splitlines() if network_log.exists() else []
    return outcomes, tried


@pytest.fixture
def agent(fake, tmp_path):
    with make_agent(fake, tmp_path / "outbox.db") as a:
        yield a


# --- the original-style suite without the one line --------------------------------------


def test_the_original_style_suite_without_the_one_line_fails_fast_and_never_connects(tmp_path):
    source = ORIGINAL_STYLE_SUITE.read_text()
    assert source.count(THE_ONE_LINE) == 1
    (tmp_path / "test_sdk_suite.py").write_text(source.replace(THE_ONE_LINE, ""))
    (tmp_path / "test_control.py").write_text(TRIPWIRE_CONTROL)
    outcomes, tried = run_pytest(tmp_path, "test_sdk_suite.py", "test_control.py")
    # The tripwire works: the control tried the network, and nothing else did.
    assert outcomes.pop("test_an_unpatched_client_tries_the_network") is None
    assert tried and all(test.startswith("test_control.py::") for test in tried)
    assert len(outcomes) > 20
    for name, failure in outcomes.items():
        if name in NO_REQUEST_TESTS:
            assert failure is None, name
        else:
            assert failure is not None, name
            assert failure.startswith("tracker_agent.exceptions.PatchedRequestsError: "), name
            assert README_SECTION in failure, name


# --- the one line: route_requests_request / requests_request_route ------------------------


def test_the_route_calls_requests_request_as_exponea_python_sdk_did(no_network):
    fake = mock.Mock(return_value=MinimalResponse({"success": True, "data": []}))
    with requests_request_route(), mock.patch("requests.request", fake):
        with Exponea("test", username="key-id", password="secret") as client:
            client.catalog.get_catalog_items("c1", params={"query": "a b"})
        with Exponea("test") as client:
            client.tracking.add_event({"registered": "ann"}, "view")
    assert fake.call_args_list == [
        mock.call(
            "GET",
            "https://api.exponea.com/data/v2/projects/test/catalogs/c1/items?query=a+b",
            json=None,
            auth=HTTPBasicAuth("key-id", "secret"),
            timeout=SDK_TIMEOUT_SECONDS,
        ),
        mock.call(
            "POST",
            "https://api.exponea.com/track/v2/projects/test/customers/events",
            json={"customer_ids": {"registered": "ann"}, "event_type": "view", "properties": {}},
            auth=HTTPBasicAuth("", ""),
            timeout=SDK_TIMEOUT_SECONDS,
        ),
    ]


def test_the_route_works_as_a_decorator_without_pytest(no_network):
    @requests_request_route()
    @mock.patch("requests.request", answering({"success": True, "time": SEED_TIME}))
    def a_unittest_style_test():
        with Exponea("test") as client:
            return client.tracking.get_system_time()

    assert a_unittest_style_test() == SEED_TIME


def test_with_the_route_an_unpatched_request_goes_out_as_usual(exponea):
    with requests_request_route():
        assert isinstance(exponea.tracking.get_system_time(), float)
    assert requests.Session.request.__qualname__ == "Session.request"  # restored


def test_the_route_leaves_other_codes_requests_alone(fake):
    sdk_fake = mock.Mock(return_value=MinimalResponse({"success": True}))
    with requests_request_route(), mock.patch("requests.request", sdk_fake):
        with requests.Session() as session:
            answer = session.get(f"{fake.url}/track/v2/projects/{TOKEN}/system/time")
    assert answer.status_code == 200 and "time" in answer.json()
    sdk_fake.assert_not_called()


def test_a_tracker_agent_drains_through_the_route(fake, tmp_path):
    sdk_fake = mock.Mock(
        return_value=MinimalResponse({"success": True, "results": [{"success": True}]})
    )
    # This fake answers every request as a batch, GET system/time too: clock correction would
    # give up on it only after CLOCK_LEARN_ATTEMPTS probes (README: "Porting your tests").
    with (
        make_agent(fake, tmp_path / "outbox.db", clock_correction=False) as agent,
        requests_request_route(),
        mock.patch("requests.request", sdk_fake),
    ):
        assert agent.tracking.add_event({"registered": "ann"}, "view", timestamp=5) is True
        assert agent.flush(timeout=5).delivered == 1
    (method, url), kwargs = sdk_fake.call_args
    assert (method, url) == ("POST", f"{fake.url}/track/v2/projects/{TOKEN}/batch")
    assert [c["data"]["event_type"] for c in kwargs["json"]["commands"]] == ["view"]
    assert fake.requests == []  # answered by the test's fake, not sent


# --- the other one-line change: patching requests.Session.request ------------------------


def test_patching_session_request_with_the_minimal_fake_works(no_network, sleeps):
    client = Exponea("test", sleep=sleeps.append)
    with mock.patch("requests.Session.request", answering({"success": True, "time": SEED_TIME})):
        assert client.tracking.get_system_time() == SEED_TIME
        assert client.tracking.add_event({"registered": "test"}, "event_type") is True
    report = {"success": True, "name": "r", "header": ["a"], "rows": [[1]]}
    with mock.patch("requests.Session.request", mock.Mock(return_value=MinimalResponse(report))):
        assert client.analyses.get_report("r") == {"name": "r", "data": [{"a": 1}]}
    assert sleeps == []


def _real_response(body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response._content = body
    return response


BODY = {"success": True, "time": SEED_TIME}


@pytest.mark.parametrize(
    "response",
    [
        SimpleNamespace(status_code=200, text=json.dumps(BODY)),
        SimpleNamespace(status_code=200, content=json.dumps(BODY).encode()),
        SimpleNamespace(status_code=200, json=lambda: BODY),
        mock.Mock(status_code=200, text=json.dumps(BODY)),
        _real_response(json.dumps(BODY).encode()),
    ],
    ids=["text", "content", "json", "mock", "requests.Response"],
)
def test_a_made_up_response_may_carry_its_body_as_text_content_or_json(no_network, response):
    with mock.patch("requests.Session.request", return_value=response):
        assert Exponea("test").tracking.get_system_time() == SEED_TIME


def test_a_made_up_error_answer_is_translated_like_a_real_one(no_network, sleeps):
    client = Exponea("test", sleep=sleeps.append)
    answer = answering({"success": False, "errors": ["Could not authenticate"]}, status_code=401)
    with mock.patch("requests.Session.request", answer), pytest.raises(AuthenticationError):
        client.customer.get_customer({"registered": "test"})
    assert sleeps == []


def test_a_made_up_response_without_a_status_code_fails_at_once(no_network, sleeps):
    client = Exponea("test", sleep=sleeps.append)
    with mock.patch("requests.Session.request", return_value=SimpleNamespace(text="{}")):
        with pytest.raises(InvalidResponseError, match="status_code") as info:
            client.tracking.get_system_time()
    assert info.value.retryable is False and sleeps == []


# --- an escaped request: stopped before any connection ------------------------------------


def _patch_with_mock(monkeypatch):
    return mock.patch("requests.request")


def _patch_with_function(monkeypatch):
    return mock.patch("requests.request", answering({"success": True}))


def _patch_api_module(monkeypatch):
    return mock.patch("requests.api.request", answering({"success": True}))


def _patch_with_monkeypatch(monkeypatch):
    monkeypatch.setattr(requests, "request", answering({"success": True}))
    return contextlib.nullcontext()  # monkeypatch undoes it


@pytest.mark.parametrize(
    "patcher",
    [_patch_with_mock, _patch_with_function, _patch_api_module, _patch_with_monkeypatch],
    ids=["MagicMock", "function", "requests.api.request", "monkeypatch"],
)
@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.tracking.get_system_time(),  # a read: would be retried
        lambda c: c.tracking.add_event({"registered": "ann"}, "view"),
        lambda c: c.catalog.get_catalog_name("c1"),
    ],
    ids=["read", "write", "data API"],
)
def test_an_escaped_request_fails_fast_naming_the_readme_section(
    closed_port_client, sleeps, no_network, monkeypatch, patcher, call
):
    with patcher(monkeypatch), pytest.raises(PatchedRequestsError) as info:
        call(closed_port_client)
    assert README_SECTION in str(info.value)
    assert "route_requests_request" in str(info.value)
    assert not isinstance(info.value, APIException)  # no `except APIException` swallows it
    assert sleeps == []  # not retried


def test_control_a_request_that_gets_out_reaches_the_closed_port(closed_port_client):
    with pytest.raises(APIException, match="refused"):
        closed_port_client.tracking.add_event({"registered": "ann"}, "view")


def test_an_injected_session_whose_request_is_patched_is_used_as_is(no_network):
    session = requests.Session()
    session.request = answering({"success": True, "time": SEED_TIME})
    with mock.patch("requests.request"):
        assert Exponea("test", session=session).tracking.get_system_time() == SEED_TIME


def test_a_patch_made_after_tracker_agent_was_imported_without_requests_is_seen():
    code = """
import sys
from unittest import mock

from tracker_agent import Exponea
from tracker_agent.exceptions import PatchedRequestsError

assert "requests" not in sys.modules, "importing tracker_agent imported requests"
with mock.patch("requests.request"):  # imports requests now
    try:
        Exponea("test", url="http://127.0.0.1:9", read_retries=0).tracking.get_system_time()
    except PatchedRequestsError:
        print("stopped")
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.stdout.strip() == "stopped", result.stderr


def test_requests_own_function_is_never_taken_for_a_fake():
    assert requests_request_is_faked(requests) is False


def test_a_wrapper_that_calls_the_real_function_is_not_a_fake(exponea, monkeypatch):
    real = requests.request

    @functools.wraps(real)
    def traced(*args, **kwargs):  # what an APM's instrumentation looks like
        return real(*args, **kwargs)

    monkeypatch.setattr(requests, "request", traced)
    assert requests_request_is_faked(requests) is False
    assert isinstance(exponea.tracking.get_system_time(), float)


def test_nothing_is_a_fake_without_a_test_framework_loaded():
    code = """
import sys

import requests

from tracker_agent.testguard import requests_request_is_faked

requests.request = lambda *args, **kwargs: None
assert not {"pytest", "unittest"} & set(sys.modules), sorted(sys.modules)
print(requests_request_is_faked(requests))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.stdout.strip() == "False", result.stderr


# --- batch builders: exponea-python-sdk's command shapes ----------------------------------

SEED_EVENT = {
    "name": "customers/events",
    "data": {
        "customer_ids": {"registered": "test"},
        "timestamp": None,
        "properties": {"property": "test"},
        "event_type": "event_type",
    },
}
SEED_UPDATE = {
    "name": "customers",
    "data": {"customer_ids": {"registered": "test"}, "properties": {"first_name": "Lukas"}},
}


@pytest.fixture(params=["direct", "durable"])
def tracking(request, fake, tmp_path):
    """The direct client's tracking namespace, then the agent's."""
    if request.param == "direct":
        with Exponea(TOKEN, username=USERNAME, password=PASSWORD, url=fake.url) as client:
            yield client.tracking
    else:
        with make_agent(fake, tmp_path / "outbox.db") as a:
            yield a.tracking


def test_batch_builders_return_exponea_python_sdks_commands(tracking, fake):
    # The seed documentation's batch_commands example, and its add_event example.
    event = tracking.add_event(
        {"registered": "test"}, "event_type", properties={"property": "test"}, batch=True
    )
    assert event == SEED_EVENT
    assert list(event["data"]) == ["customer_ids", "timestamp", "properties", "event_type"]
    update = tracking.update_customer_properties(
        {"registered": "test"}, {"first_name": "Lukas"}, batch=True
    )
    assert update == SEED_UPDATE
    assert tracking.get_system_time(batch=True) == {"name": "system/time"}
    timed = tracking.add_event(
        {"registered": "test"},
        "event_type",
        properties={"property": "sample_property"},
        timestamp=1533663283,
        batch=True,
    )
    assert timed["data"]["timestamp"] == 1533663283
    bare = tracking.add_event({"registered": "test"}, "event_type", batch=True)
    assert bare["data"]["properties"] is None and bare["data"]["timestamp"] is None
    assert fake.requests == []


def test_batch_commands_takes_the_sdk_commands_back_and_sends_them_normalised(exponea, fake):
    no_properties = {
        "name": "customers/events",
        "data": {
            "customer_ids": {"registered": "test"},
            "timestamp": None,
            "properties": None,
            "event_type": "bare",
        },
    }
    result = exponea.tracking.batch_commands(
        [SEED_EVENT, SEED_UPDATE, no_properties, exponea.tracking.get_system_time(batch=True)]
    )
    assert result[:3] == [True, True, True] and isinstance(result[3], float)
    sent = [command["data"] for command in fake.batches[0][:3]]
    assert sent[0] == {
        "customer_ids": {"registered": "test"},
        "event_type": "event_type",
        "properties": {"property": "test"},
    }  # no "timestamp": None on the wire: the server's clock
    assert sent[1] == SEED_UPDATE["data"]
    assert sent[2]["properties"] == {} and "timestamp" not in sent[2]


def test_the_agent_fixes_a_built_commands_timestamps_when_batch_commands_queues_it(agent, fake):
    event = agent.tracking.add_event({"registered": "ann"}, "view", batch=True)
    update = agent.tracking.update_customer_properties({"registered": "ann"}, {"a": 1}, batch=True)
    before = time.time()
    assert agent.tracking.batch_commands([event, update]) == [True, True]
    after = time.time()
    assert agent.flush(timeout=5).delivered == 2
    sent_event, sent_update = (command["data"] for command in fake.batches[0])
    assert before - 1e-6 <= sent_event["timestamp"] <= after + 1e-6
    assert before - 1e-6 <= sent_update["update_timestamp"] <= after + 1e-6
    assert event["data"]["timestamp"] is None  # the caller's command is left as built
    assert "update_timestamp" not in update["data"]


def test_the_agent_builds_a_system_time_command_but_will_not_queue_it(agent):
    command = agent.tracking.get_system_time(batch=True)
    assert command == {"name": "system/time"}
    with pytest.raises(ValidationError, match=r"commands\[0\].*system/time"):
        agent.tracking.batch_commands([command])
    assert agent.stats()["pending"] == 0


# --- exception text: the server's message alone -------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, {"error": "access key not found", "success": False}, "access key not found"),
        (
            200,
            {"errors": ["not authorized to update"], "success": False},
            "not authorized to update",
        ),
        (
            404,
            {"errors": {"_global": ["Customer does not exist"]}, "success": False},
            "Customer does not exist",
        ),
        (400, {"errors": ["a", "b"], "success": False}, "a; b"),
    ],
    ids=["error", "errors", "errors._global", "several"],
)
def test_an_api_error_reads_as_the_servers_message_alone(exponea, fake, status, body, message):
    fake.fail_next(status=status, body=body)
    with pytest.raises(APIException) as info:
        exponea.analyses.get_report("r1")
    exc = info.value
    assert str(exc) == exc.message == exc.args[0] == message
    path = f"/data/v2/projects/{TOKEN}/analyses/report"
    assert exc.context == f"POST {path} HTTP {status}"
    assert (exc.method, exc.path, exc.status_code) == ("POST", path, status)
    assert path in repr(exc) and message in repr(exc)
    assert str(pickle.loads(pickle.dumps(exc))) == message
    for text in (str(exc), repr(exc), exc.context):
        assert PASSWORD not in text


def test_an_error_without_a_request_has_no_context():
    exc = BadRequestError("bad")
    assert str(exc) == "bad" and exc.context == ""
