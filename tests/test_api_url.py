"""One rule for the API base URL, in Settings and in the direct Exponea client."""

from __future__ import annotations

import pytest

from tracker_agent import ConfigError, Exponea, Settings, ValidationError


@pytest.mark.parametrize("url", ["http://api.exponea.com", "http://10.0.0.1", "http://[::2]"])
def test_the_direct_client_refuses_plain_http_to_another_host_as_settings_do(url):
    with pytest.raises(ValidationError, match="would send credentials unencrypted"):
        Exponea("p", username="u", password="pw", url=url)
    with pytest.raises(ConfigError, match="would send credentials unencrypted"):
        Settings(project_token="p", url=url)
    client = Exponea("p", username="u", password="pw", url=url, allow_http=True)
    assert client.url == url
    assert Exponea.from_settings(Settings(project_token="p", url=url, allow_http=True)).url == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/", "http://localhost", "http://[::1]:9"])
def test_the_direct_client_allows_plain_http_to_loopback(url):
    assert Exponea("p", url=url).url == url.rstrip("/")
