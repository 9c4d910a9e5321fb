"""The API base URL: its default, and the one rule that Settings and the Exponea client both
apply to it (so a URL the daemon refuses is refused by the direct client too).

- an http(s) URL with a host, a valid port, no credentials, no query or fragment;
- plain http:// only to a loopback host (127.0.0.0/8, ::1, localhost), unless allow_http:
  Basic auth would otherwise cross the network unencrypted.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tracker_agent.constants import DEFAULT_URL

__all__ = ["DEFAULT_URL", "URLRefused", "check_api_url", "check_scheme", "check_url_form"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


class URLRefused(ValueError):
    """Why a base URL is refused (never echoes a credential the URL may carry)."""


def check_api_url(url: str, *, allow_http: bool) -> str:
    """`url` without its trailing slash, if both rules of the module docstring pass."""
    normalised = check_url_form(url)
    check_scheme(normalised, allow_http=allow_http)
    return normalised


def check_url_form(url: str) -> str:
    """`url` without its trailing slash if it is a well-formed API base URL."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "https://[::1": an unclosed or invalid bracketed host
        raise URLRefused(f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise URLRefused(f"must be an http(s) URL such as {DEFAULT_URL}")
    if parts.username is not None or parts.password is not None:
        raise URLRefused("must not contain credentials; use username/password settings")
    if parts.query or parts.fragment:
        raise URLRefused(f"must not have a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise URLRefused(f"has an invalid port: {url!r}") from None
    return url.rstrip("/")


def check_scheme(url: str, *, allow_http: bool) -> None:
    """Refuse plain http:// to a host that is not loopback, unless `allow_http`."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname or ""):
        raise URLRefused(
            f"plain http:// to {parts.hostname!r} would send credentials unencrypted; "
            "use https://, a loopback host, or set allow_http = true"
        )


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
