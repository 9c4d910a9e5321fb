"""Shared fixtures: a FakeExponea per test module (reset before each test) and a client on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tracker_agent.client import Exponea
from tracker_agent.testing import FakeExponea

TOKEN = "test-project"
USERNAME = "key-id"
PASSWORD = "secret"
PUBLIC_KEY = "public-key"
TEST_READ_TIMEOUT_SECONDS = 2.0


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeExponea]:
    """One FakeExponea for the whole test module (starting one per test costs time)."""
    with FakeExponea(
        project_token=TOKEN, username=USERNAME, password=PASSWORD, public_key=PUBLIC_KEY
    ) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeExponea) -> FakeExponea:
    """The module's FakeExponea with empty state, no faults and an empty request log."""
    fake_server.reset()
    return fake_server


@pytest.fixture
def sleeps() -> list[float]:
    """Delays the `exponea` client asked to sleep, recorded instead of slept."""
    return []


@pytest.fixture
def exponea(fake: FakeExponea, sleeps: list[float]) -> Iterator[Exponea]:
    """A private-key client on `fake` whose retry sleeps go to `sleeps`."""
    with Exponea(
        TOKEN,
        username=USERNAME,
        password=PASSWORD,
        url=fake.url,
        request_timeout=TEST_READ_TIMEOUT_SECONDS,
        sleep=sleeps.append,
    ) as client:
        yield client
