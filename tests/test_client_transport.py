"""The client's transport over real HTTP: auth, headers, errors, timeouts, retries, secrets."""

from __future__ import annotations

import base64
import email.utils
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from unittest import mock

import pytest
import requests
from conftest import PASSWORD, PUBLIC_KEY, TOKEN, USERNAME

from tracker_agent._version import __version__
from tracker_agent.client import Exponea
from tracker_agent.constants import DEFAULT_URL, MAX_RESPONSE_BYTES
from tracker_agent.exceptions import (
    APIException,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    ValidationError,
)
from tracker_agent.testing import FakeExponea
from tracker_agent.transport import HTTPTransport

SHORT_TIMEOUT_SECONDS = 0.2
SLOW_ANSWER_SECONDS = 0.6
EVENT = ({"registered": "test"}, "view")
# The total deadline: connect + read timeout, with a read timeout a trickle never trips.
DEADLINE_CONNECT_SECONDS = 0.5
DEADLINE_READ_SECONDS = 1.0
DEADLINE_SECONDS = DEADLINE_CONNECT_SECONDS + DEADLINE_READ_SECONDS
TRICKLE_INTERVAL_SECONDS = 0.2  # a byte every 0.2 s: each read gets data well within 1 s
DEADLINE_SLACK_SECONDS = 0.5  # thread wake-up and exception unwinding on a loaded machine
HANG_UP_WAIT_SECONDS = 2.0
UTF8_PASSWORD = "pässwörd€"  # "€" is outside latin-1, which requests uses for Basic auth
WATCHDOG_THREAD = "tracker-agent-deadline"


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def client_for(url: str, sleeps: list[float] | None = None, **kwargs) -> Exponea:
    kwargs.setdefault("username", USERNAME)
    kwargs.setdefault("password", PASSWORD)
    return Exponea(TOKEN, url=url, sleep=(sleeps if sleeps is not None else []).append, **kwargs)


# --- construction -------------------------------------------------------------------------


def test_defaults_match_the_seed_sdk():
    client = Exponea(TOKEN)
    assert client.url == DEFAULT_URL
    assert client.request_timeout == 10.0
    assert client.connect_timeout == 3.05
    assert client.read_retries == 2
    assert client.logger is logging.getLogger("tracker_agent")
    client.close()


def test_url_trailing_slash_is_stripped(fake):
    with client_for(fake.url + "/") as client:
        assert client.url == fake.url
        assert isinstance(client.tracking.get_system_time(), float)
    assert fake.requests[0].path == f"/track/v2/projects/{TOKEN}/system/time"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"project_token": ""}, "project_token"),
        ({"url": "api.exponea.com"}, "url"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"request_timeout": "10"}, "request_timeout"),
        ({"connect_timeout": float("nan")}, "connect_timeout"),
        ({"read_retries": -1}, "read_retries"),
        ({"password": 123}, "password"),
    ],
)
def test_bad_constructor_arguments_are_refused(kwargs, field):
    arguments = {"project_token": TOKEN, **kwargs}
    with pytest.raises(ValidationError) as info:
        Exponea(**arguments)
    assert info.value.field == field


# --- headers and auth ------------------------------------------------------------------------


def test_requests_carry_user_agent_and_basic_auth(exponea, fake):
    assert exponea.tracking.add_event(*EVENT) is True
    headers = fake.requests[0].headers
    assert headers["User-Agent"] == f"tracker-agent/{__version__}"
    expected = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    assert headers["Authorization"] == f"Basic {expected}"
    assert headers["Content-Type"] == "application/json"


def test_user_agent_suffix_is_appended(fake):
    with client_for(fake.url, user_agent="shop/2.1") as client:
        client.tracking.get_system_time()
    assert fake.requests[0].headers["User-Agent"] == f"tracker-agent/{__version__} shop/2.1"


def test_password_outside_latin1_is_sent_as_utf8_basic_auth():
    with FakeExponea(project_token=TOKEN, username=USERNAME, password=UTF8_PASSWORD) as fake:
        with client_for(fake.url, password=UTF8_PASSWORD) as client:
            assert client.tracking.add_event(*EVENT) is True
            assert client.customer.get_customer({"registered": "test"})["ids"]
        with client_for(fake.url, password="passwörd€-wrong") as client:
            with pytest.raises(AuthenticationError):
                client.tracking.add_event(*EVENT)
        header = fake.requests[0].headers["Authorization"]
    token = base64.b64encode(f"{USERNAME}:{UTF8_PASSWORD}".encode()).decode()
    assert header == f"Basic {token}"
    assert len(fake.events) == 1


def test_public_key_authenticates_tracking_with_a_token_header(fake):
    with client_for(fake.url, username="", password="", public_key=PUBLIC_KEY) as client:
        assert client.tracking.add_event(*EVENT) is True
        assert fake.requests[-1].headers["Authorization"] == f"Token {PUBLIC_KEY}"
        with pytest.raises(AuthenticationError) as info:  # data endpoints need the private key
            client.customer.get_customer({"registered": "test"})
    assert info.value.status_code == 401
    assert "Authorization" not in fake.requests[-1].headers


def test_with_both_keys_tracking_uses_the_token_and_data_calls_use_basic(fake):
    with client_for(fake.url, public_key=PUBLIC_KEY) as client:
        client.tracking.add_event(*EVENT)
        assert client.customer.get_events({"registered": "test"}, ["view"])[0]["type"] == "view"
    first, second = fake.requests
    assert first.headers["Authorization"].startswith("Token ")
    assert second.headers["Authorization"].startswith("Basic ")


def test_wrong_password_raises_authentication_error_401(fake):
    with client_for(fake.url, password="wrong") as client:
        with pytest.raises(AuthenticationError) as info:
            client.tracking.add_event(*EVENT)
    assert info.value.status_code == 401
    assert info.value.errors == ["Could not authenticate"]
    assert info.value.retryable is False


def test_unknown_project_token_raises_authentication_error_with_status_400(fake):
    with Exponea("other-project", USERNAME, PASSWORD, url=fake.url) as client:
        with pytest.raises(AuthenticationError) as info:
            client.tracking.add_event(*EVENT)
    assert info.value.status_code == 400
    assert "Invalid project id" in info.value.errors


def test_system_time_answers_even_with_wrong_credentials(fake):
    with client_for(fake.url, password="wrong") as client:
        assert isinstance(client.tracking.get_system_time(), float)


# --- error shapes over HTTP --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "cls", "errors"),
    [
        (400, {"success": False, "error": "bad"}, BadRequestError, ["bad"]),
        (400, {"success": False, "errors": ["a", "b"]}, BadRequestError, ["a", "b"]),
        (
            404,
            {"success": False, "errors": {"_global": ["gone"], "id": ["x"]}},
            NotFoundError,
            ["gone", "id: x"],
        ),
        (500, {"message": "Internal"}, ServerError, ["Internal"]),
        (200, {"success": False, "errors": ["nope"]}, BadRequestError, ["nope"]),
    ],
)
def test_every_error_body_shape_becomes_an_exception_with_its_messages(
    exponea, fake, status, body, cls, errors
):
    fake.fail_next(status=status, body=body)
    with pytest.raises(cls) as info:
        exponea.tracking.add_event(*EVENT)
    assert info.value.errors == errors
    assert info.value.status_code == status
    assert info.value.method == "POST"
    assert info.value.path == f"/track/v2/projects/{TOKEN}/customers/events"


def test_non_json_answer_raises_invalid_response_with_status_and_snippet(exponea, fake):
    fake.fail_next(status=200, body="<html><h1>Welcome to the hotel wifi</h1></html>")
    with pytest.raises(InvalidResponseError) as info:
        exponea.tracking.add_event(*EVENT)
    assert info.value.status_code == 200
    assert "Welcome to the hotel wifi" in str(info.value)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda f: f.captive_portal_next(), id="captive-portal-200-html"),
        pytest.param(lambda f: f.captive_portal_next(redirect=True), id="captive-portal-302"),
        pytest.param(lambda f: f.fail_next(status=200, body='{"success": tr'), id="truncated"),
        pytest.param(lambda f: f.fail_next(status=200, body=[1, 2]), id="not-an-object"),
        pytest.param(
            lambda f: f.fail_next(status=400, body="<html>Bad Request</html>"), id="proxy-400"
        ),
        pytest.param(lambda f: f.oversize_next(), id="oversized"),
    ],
)
def test_unreadable_answers_are_retryable_and_reads_retry_them(exponea, fake, sleeps, fault):
    fault(fake)
    assert isinstance(exponea.tracking.get_system_time(), float)
    assert len(fake.requests) == 2 and len(sleeps) == 1
    fault(fake)
    with pytest.raises(InvalidResponseError) as info:
        exponea.tracking.add_event(*EVENT)  # a write: never retried by the client
    assert info.value.retryable is True
    assert len(fake.requests) == 3 and len(sleeps) == 1


def test_a_redirect_is_never_followed_and_names_only_the_host(exponea, fake):
    fake.captive_portal_next(redirect=True)
    with pytest.raises(InvalidResponseError) as info:
        exponea.tracking.add_event(*EVENT)
    assert info.value.status_code == 302
    assert "redirected to portal.example" in str(info.value)
    assert "continue" not in str(info.value)  # the query stays out of messages
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (400, "<html><body>400 Bad Request (nginx)</body></html>", InvalidResponseError),
        (413, "<html>413 Request Entity Too Large</html>", InvalidResponseError),
        (405, "<html>Method Not Allowed</html>", InvalidResponseError),
        (400, {"success": False}, InvalidResponseError),  # JSON, but no error messages
        (400, {"success": False, "errors": ["bad event"]}, BadRequestError),
        (422, {"errors": ["bad event"]}, BadRequestError),
        (401, "<html>Unauthorized</html>", AuthenticationError),
        (404, "<html>Not Found</html>", NotFoundError),
    ],
)
def test_only_the_apis_json_error_body_makes_a_4xx_a_refusal(exponea, fake, status, body, cls):
    fake.fail_next(status=status, body=body)
    with pytest.raises(APIException) as info:
        exponea.tracking.add_event(*EVENT)
    assert type(info.value) is cls
    assert info.value.status_code == status
    assert info.value.retryable is (cls is InvalidResponseError)


def test_rate_limited_answer_carries_retry_after(exponea, fake):
    fake.fail_next(status=429, retry_after=7)
    with pytest.raises(RateLimitedError) as info:
        exponea.tracking.add_event(*EVENT)
    assert info.value.retry_after == 7.0 and info.value.retryable is True


def test_rejected_single_command_is_a_bad_request(exponea, fake):
    fake.reject_commands(lambda command: True, error="event_type not allowed")
    with pytest.raises(BadRequestError) as info:
        exponea.tracking.add_event(*EVENT)
    assert info.value.errors == ["event_type not allowed"]


# --- no answer: refused, dropped, timed out ------------------------------------------------------


def test_refused_connection_raises_retryable_transport_error():
    with client_for(closed_port_url(), read_retries=0) as client:
        with pytest.raises(TransportError) as info:
            client.tracking.add_event(*EVENT)
    exc = info.value
    assert type(exc) is TransportError
    assert exc.retryable is True and exc.status_code is None
    assert "refused" in str(exc).lower()
    assert isinstance(exc.__cause__, requests.ConnectionError)


def test_dropped_connection_raises_transport_error(exponea, fake):
    fake.drop_next()
    with pytest.raises(TransportError) as info:
        exponea.tracking.add_event(*EVENT)
    assert info.value.retryable is True


def test_slow_write_raises_timeout_and_is_not_retried(fake, sleeps):
    fake.delay_next(seconds=SLOW_ANSWER_SECONDS)
    with client_for(fake.url, sleeps, request_timeout=SHORT_TIMEOUT_SECONDS) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as info:
            client.tracking.add_event(*EVENT)
        assert time.monotonic() - started < SLOW_ANSWER_SECONDS
    assert info.value.retryable is True
    assert info.value.path == f"/track/v2/projects/{TOKEN}/customers/events"
    assert len(fake.requests) == 1 and sleeps == []


def test_slow_read_is_retried_after_a_timeout(fake, sleeps):
    fake.delay_next(seconds=SLOW_ANSWER_SECONDS)
    with client_for(fake.url, sleeps, request_timeout=SHORT_TIMEOUT_SECONDS) as client:
        assert isinstance(client.tracking.get_system_time(), float)
    assert len(fake.requests) == 2 and len(sleeps) == 1


# --- total deadline and size cap -----------------------------------------------------------------


def deadline_client(url: str, **kwargs) -> Exponea:
    kwargs.setdefault("read_retries", 0)
    return client_for(
        url,
        request_timeout=DEADLINE_READ_SECONDS,
        connect_timeout=DEADLINE_CONNECT_SECONDS,
        **kwargs,
    )


def wait_for_hang_up(fake: FakeExponea) -> float:
    """When the fake saw the client close the connection of its last request."""
    deadline = time.monotonic() + HANG_UP_WAIT_SECONDS
    while fake.requests[-1].hung_up_at is None:
        assert time.monotonic() < deadline, "the fake never saw the connection close"
        time.sleep(0.02)
    hung_up_at = fake.requests[-1].hung_up_at
    assert hung_up_at is not None
    return hung_up_at


@pytest.mark.parametrize("headers_first", [False, True], ids=["whole-answer", "body-only"])
def test_a_trickled_answer_is_cut_off_at_the_total_deadline(fake, headers_first):
    fake.trickle_next(interval=TRICKLE_INTERVAL_SECONDS, headers_first=headers_first)
    with deadline_client(fake.url) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as info:
            client.tracking.add_event(*EVENT)
        took = time.monotonic() - started
        assert DEADLINE_SECONDS - 0.1 <= took <= DEADLINE_SECONDS + DEADLINE_SLACK_SECONDS
        assert "deadline of 1.5 s" in str(info.value) and info.value.retryable is True
        # The request is really gone: the server saw the connection close, at the deadline.
        hung_up_after = wait_for_hang_up(fake) - fake.requests[-1].received_at
        assert hung_up_after <= DEADLINE_SECONDS + DEADLINE_SLACK_SECONDS
        assert client.tracking.add_event(*EVENT) is True  # the client goes on working
    assert len(fake.events) == 1


def test_each_read_retry_has_its_own_deadline(fake, sleeps):
    fake.trickle_next(2, interval=TRICKLE_INTERVAL_SECONDS)
    with deadline_client(fake.url, sleeps=sleeps, read_retries=2) as client:
        started = time.monotonic()
        assert isinstance(client.tracking.get_system_time(), float)
        assert time.monotonic() - started <= 2 * (DEADLINE_SECONDS + DEADLINE_SLACK_SECONDS)
    assert len(fake.requests) == 3 and len(sleeps) == 2


def test_the_deadline_cuts_off_the_body_of_an_injected_session(fake):
    # An injected session gets no watched connections; its body is still cut off.
    fake.trickle_next(interval=TRICKLE_INTERVAL_SECONDS, headers_first=True)
    with requests.Session() as session, deadline_client(fake.url, session=session) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            client.tracking.add_event(*EVENT)
        assert time.monotonic() - started <= DEADLINE_SECONDS + DEADLINE_SLACK_SECONDS


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
def test_an_oversized_answer_is_cut_off_at_the_cap(exponea, fake, declare_length):
    # Twice the cap: the fake is still writing when the client closes, so it sees the close.
    fake.oversize_next(size=2 * MAX_RESPONSE_BYTES, declare_length=declare_length)
    with pytest.raises(InvalidResponseError) as info:
        exponea.tracking.add_event(*EVENT)
    assert f"longer than {MAX_RESPONSE_BYTES} bytes" in str(info.value)
    assert info.value.retryable is True and info.value.status_code == 200
    wait_for_hang_up(fake)  # the connection was closed, not read to the end
    # Just under the cap it is read whole: {"success": true, "results": [], "padding": ...}
    fake.oversize_next(size=MAX_RESPONSE_BYTES - 100, declare_length=declare_length)
    with pytest.raises(InvalidResponseError, match="0 results for 1 commands"):
        exponea.tracking.batch_commands([exponea.tracking.get_system_time(batch=True)])
    assert exponea.tracking.add_event(*EVENT) is True


def test_an_injected_session_gets_the_size_cap(fake):
    fake.oversize_next()
    with requests.Session() as session, client_for(fake.url, session=session) as client:
        with pytest.raises(InvalidResponseError, match="longer than"):
            client.tracking.add_event(*EVENT)


def watchdog_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == WATCHDOG_THREAD}


def test_one_deadline_thread_per_client_started_lazily_and_ended_by_close(fake):
    before = watchdog_threads()  # other clients' threads may end meanwhile: compare sets
    client = client_for(fake.url)
    assert watchdog_threads() - before == set()  # nothing until the first request
    for _ in range(50):
        client.tracking.get_system_time()
    (mine,) = watchdog_threads() - before  # one for all 50 requests
    client.close()
    assert not mine.is_alive()
    client.tracking.get_system_time()  # usable after close: a thread starts again
    (again,) = watchdog_threads() - before
    client.close()
    assert not again.is_alive()


# --- requests that cannot be sent ----------------------------------------------------------------


class RaisingSession:
    """A session whose request() fails the way requests/http.client do on odd input."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def request(self, *args, **kwargs):
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [
        UnicodeEncodeError("latin-1", "secret-€", 7, 8, "ordinal not in range(256)"),
        ValueError("Invalid header value"),
        TypeError("unexpected argument"),
    ],
    ids=["unicode", "value", "type"],
)
def test_a_request_that_cannot_be_sent_is_a_non_retryable_transport_error(exc, sleeps):
    session = RaisingSession(exc)
    transport = HTTPTransport("http://127.0.0.1:9", session=session, sleep=sleeps.append)
    with pytest.raises(TransportError) as info:
        transport.request("GET", "/x", idempotent=True)
    assert info.value.retryable is False and info.value.__cause__ is exc
    assert "secret" not in str(info.value)  # only the type: the text may quote a secret
    assert type(exc).__name__ in str(info.value) and sleeps == []


def test_an_unsendable_header_is_a_non_retryable_transport_error(fake):
    with client_for(fake.url, user_agent="shop\r\nX-Injected: 1") as client:
        with pytest.raises(TransportError) as info:
            client.tracking.add_event(*EVENT)
    assert info.value.retryable is False
    assert fake.requests == []


# --- retries -------------------------------------------------------------------------------------


def test_read_retries_honour_retry_after_seconds(exponea, fake, sleeps):
    fake.fail_next(2, status=503, retry_after=3)
    assert isinstance(exponea.tracking.get_system_time(), float)
    assert sleeps == [3.0, 3.0]
    assert [r.status for r in fake.requests] == [503, 503, 200]


def test_read_retries_honour_retry_after_http_date(exponea, fake, sleeps):
    fake.fail_next(status=429, retry_after=email.utils.formatdate(time.time() + 30, usegmt=True))
    exponea.customer.get_customers()
    assert len(sleeps) == 1 and 25 <= sleeps[0] <= 30


def test_retry_after_is_capped_for_reads(exponea, fake, sleeps):
    fake.fail_next(status=503, retry_after=3600)
    exponea.tracking.get_system_time()
    assert sleeps == [60.0]


def test_read_retries_back_off_with_jitter_without_retry_after(exponea, fake, sleeps):
    fake.fail_next(2, status=502)
    exponea.tracking.get_system_time()
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0


def test_read_gives_up_after_read_retries(exponea, fake, sleeps):
    fake.fail_next(3, status=503, retry_after=1)
    with pytest.raises(ServerError):
        exponea.analyses.get_report("r1")
    assert len(fake.requests) == 3 and sleeps == [1.0, 1.0]


def test_read_retries_zero_means_one_attempt(fake, sleeps):
    fake.fail_next(status=503)
    with client_for(fake.url, sleeps, read_retries=0) as client, pytest.raises(ServerError):
        client.tracking.get_system_time()
    assert len(fake.requests) == 1 and sleeps == []


def test_reads_are_not_retried_on_permanent_errors(exponea, fake, sleeps):
    fake.fail_next(status=400)
    with pytest.raises(BadRequestError):
        exponea.tracking.get_system_time()
    assert len(fake.requests) == 1 and sleeps == []


def test_refused_reads_are_retried(sleeps):
    with client_for(closed_port_url(), sleeps) as client, pytest.raises(TransportError):
        client.tracking.get_system_time()
    assert len(sleeps) == 2


@pytest.mark.parametrize("fault", ["503", "429", "drop"])
@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.tracking.add_event({"registered": "a"}, "view"),
        lambda c: c.tracking.update_customer_properties({"registered": "a"}, {"x": 1}),
        lambda c: c.tracking.batch_commands([c.tracking.get_system_time(batch=True)]),
        lambda c: c.customer.anonymize_customer({"registered": "a"}),
        lambda c: c.catalog.create_catalog("c", ["f"]),
        lambda c: c.catalog.create_catalog_item("c", "i", {"f": 1}),
        lambda c: c.catalog.delete_catalog("c"),
    ],
    ids=["event", "update", "batch", "anonymize", "create_catalog", "put_item", "delete"],
)
def test_writes_are_never_retried(exponea, fake, sleeps, fault, call):
    if fault == "drop":
        fake.drop_next()
    else:
        fake.fail_next(status=int(fault), retry_after=1)
    with pytest.raises(APIException) as info:
        call(exponea)
    assert info.value.retryable is True
    assert len(fake.requests) == 1 and sleeps == []


# --- session lifecycle ---------------------------------------------------------------------------


def test_context_manager_closes_the_session_and_the_client_can_reopen(fake):
    client = client_for(fake.url)
    with client:
        client.tracking.get_system_time()
        assert client._transport._session is not None
    assert client._transport._session is None
    client.tracking.get_system_time()  # a new session is opened on demand
    client.close()
    client.close()  # idempotent
    assert len(fake.requests) == 2


def test_injected_session_is_used_and_left_open(fake):
    with requests.Session() as session:
        session.headers["X-Caller"] = "tests"
        client = client_for(fake.url, session=session)
        client.tracking.get_system_time()
        client.close()
        client.tracking.get_system_time()  # still the caller's session, still usable
        assert client._transport._session is session
    assert [r.headers.get("X-Caller") for r in fake.requests] == ["tests", "tests"]


def test_environment_proxies_are_read_once_and_no_proxy_is_honoured(fake, monkeypatch):
    dead_proxy = closed_port_url()
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with client_for(fake.url, read_retries=0) as direct:
        direct.tracking.get_system_time()  # bypasses the proxy
        assert direct._transport._session.trust_env is False
    monkeypatch.delenv("NO_PROXY")
    with client_for(fake.url, read_retries=0) as proxied:
        with pytest.raises(TransportError):  # goes to the (dead) proxy
            proxied.tracking.get_system_time()
        assert proxied._transport._session.proxies["http"] == dead_proxy
    assert len(fake.requests) == 1


# --- secrets ------------------------------------------------------------------------------------


SECRET_PASSWORD = "pw-9f8e7d6c5b4a"
SECRET_PUBLIC_KEY = "pk-0a1b2c3d4e5f"


def test_credentials_never_appear_in_logs_errors_or_reprs(caplog):
    secrets = [
        SECRET_PASSWORD,
        SECRET_PUBLIC_KEY,
        base64.b64encode(f"{USERNAME}:{SECRET_PASSWORD}".encode()).decode(),
    ]
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with FakeExponea(
        project_token=TOKEN,
        username=USERNAME,
        password=SECRET_PASSWORD,
        public_key=SECRET_PUBLIC_KEY,
    ) as fake:
        with client_for(
            fake.url,
            password=SECRET_PASSWORD,
            public_key=SECRET_PUBLIC_KEY,
            request_timeout=SHORT_TIMEOUT_SECONDS,
        ) as client:
            seen += [repr(client), str(client.__dict__), repr(client._transport)]
            client.tracking.add_event(*EVENT)
            client.customer.get_customer({"registered": "test"})
            fake.fail_next(status=503, retry_after=0)
            client.tracking.get_system_time()
            fake.revoke_credentials()
            fake.delay_next(seconds=SLOW_ANSWER_SECONDS)
            for call in (
                lambda: client.customer.get_customer({"registered": "test"}),
                lambda: client.tracking.add_event(*EVENT),
            ):
                with pytest.raises(APIException) as info:
                    call()
                seen += [str(info.value), repr(info.value), str(info.value.__dict__)]
    with client_for(closed_port_url(), password=SECRET_PASSWORD, read_retries=0) as client:
        with pytest.raises(TransportError) as info:
            client.tracking.add_event(*EVENT)
        seen += [str(info.value), repr(info.value)]
    seen.append(caplog.text)
    assert any("-> 200" in record.getMessage() for record in caplog.records)
    for text in seen:
        for secret in secrets:
            assert secret not in text


def test_debug_log_names_method_path_status_and_duration(exponea, caplog):
    caplog.set_level(logging.DEBUG, logger="tracker_agent")
    exponea.tracking.get_system_time()
    messages = [r.getMessage() for r in caplog.records if r.name == "tracker_agent.transport"]
    assert any(
        m.startswith(f"GET /track/v2/projects/{TOKEN}/system/time -> 200 in ") and m.endswith("ms")
        for m in messages
    )


def test_import_is_light_and_configures_no_logging():
    code = (
        "import logging, sys\n"
        "import tracker_agent.client\n"
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'\n"
        "assert 'requests' not in sys.modules, 'requests imported'\n"
        "assert logging.getLogger().handlers == [], 'root handler added'\n"
        "assert logging.getLogger('tracker_agent').handlers == []\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


class RawServer:
    """Answers every request with `answers` in turn (the last one again and again) and keeps
    each request's bytes as they came off the socket."""

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buffer = b""
                while True:
                    head, sep, rest = buffer.partition(b"\r\n\r\n")
                    if not sep:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buffer += chunk
                        continue
                    length = next(
                        (
                            int(line.split(b":", 1)[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    while len(rest) < length:
                        rest += conn.recv(65536)
                    self.requests.append(head + sep + rest[:length])
                    buffer = rest[length:]
                    answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                    conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()


def _ok(body: bytes = b'{"success": true}', extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _post_twice(url: str, full_path: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    transport = HTTPTransport(url, username=USERNAME, password=PASSWORD, public_key=PUBLIC_KEY)
    if full_path:
        monkeypatch.setattr(transport, "_prepared", lambda *args: None)
    try:
        for body, public in ((b'{"a":1}', False), (b'{"b":"\xc3\xa9\xc3\xa9"}', True)):
            transport.request("POST", "/x", body=body, idempotent=False, public_key_ok=public)
        transport.request("GET", "/y", idempotent=True)
    finally:
        transport.close()


def test_requests_from_prepared_templates_go_out_byte_for_byte_as_requests_prepares_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servers = [RawServer(_ok()), RawServer(_ok())]
    try:
        _post_twice(servers[0].url, False, monkeypatch)
        _post_twice(servers[1].url, True, monkeypatch)
    finally:
        for server in servers:
            server.close()
    fast, full = (server.requests for server in servers)
    assert len(fast) == 3
    port = [server.url.rsplit(":", 1)[1].encode() for server in servers]
    assert [r.replace(port[0], b"PORT") for r in fast] == [
        r.replace(port[1], b"PORT") for r in full
    ]
    assert fast[1].endswith(b'\r\n\r\n{"b":"\xc3\xa9\xc3\xa9"}')
    assert b"Content-Length: 12\r\n" in fast[1]  # bytes, not characters
    assert b"Authorization: Token " in fast[1] and b"Authorization: Basic " in fast[0]


def test_a_cookie_the_server_sets_goes_back_with_the_next_request() -> None:
    server = RawServer(_ok(extra=b"Set-Cookie: lb=node-7; Path=/\r\n"), _ok())
    transport = HTTPTransport(server.url, username=USERNAME, password=PASSWORD)
    try:
        for _ in range(2):
            transport.request("POST", "/x", body=b"{}", idempotent=False)
    finally:
        transport.close()
        server.close()
    assert b"Cookie:" not in server.requests[0]
    assert b"Cookie: lb=node-7\r\n" in server.requests[1]


def test_a_mock_of_session_request_still_sees_every_request() -> None:
    # Users' suites patch requests.Session.request; the prepared-template path must not
    # go around it (it would reach the network behind their mock).
    real = requests.Session.request
    seen: list[tuple[str, str]] = []

    def spy(session: requests.Session, method: str, url: str, **kwargs: object) -> object:
        seen.append((method, url))
        return real(session, method, url, **kwargs)

    server = RawServer(_ok())
    transport = HTTPTransport(server.url, username=USERNAME, password=PASSWORD)
    try:
        transport.request("POST", "/x", body=b"{}", idempotent=False)  # template made
        with mock.patch.object(requests.Session, "request", spy):
            transport.request("POST", "/x", body=b"{}", idempotent=False)
    finally:
        transport.close()
        server.close()
    assert seen == [("POST", server.url + "/x")]
    assert len(server.requests) == 2
