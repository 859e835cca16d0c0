"""The client address the failed-authentication throttle counts by (web/common.py): the peer's,
or behind proxies the operator trusts (trusted_proxies), the nearest hop they do not vouch for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.requests import Request

from nanogate.core.config import Settings
from nanogate.web.common import client_address


def request(peer: str, *forwarded: str, trusted: str = "") -> Request:
    settings = Settings(trusted_proxies=trusted)  # type: ignore[arg-type]
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
            "client": (peer, 50000),
            "app": SimpleNamespace(state=SimpleNamespace(settings=settings)),
        }
    )


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        # No proxy trusted: the header is anyone's to write.
        ("203.0.113.9", ("198.51.100.1",), "", "203.0.113.9"),
        # A client talking to us directly cannot pose as another by sending the header.
        ("203.0.113.9", ("198.51.100.1",), "10.0.0.0/8", "203.0.113.9"),
        # Behind our proxy: the address it appended.
        ("10.0.0.2", ("198.51.100.1",), "10.0.0.0/8", "198.51.100.1"),
        # The client's own entries on the left are not believed.
        ("10.0.0.2", ("1.1.1.1, 198.51.100.1",), "10.0.0.0/8", "198.51.100.1"),
        # Two of our proxies, one header each or one list: the nearest untrusted hop.
        ("10.0.0.2", ("1.1.1.1, 198.51.100.1", "10.0.0.3"), "10.0.0.0/8", "198.51.100.1"),
        ("10.0.0.2", ("1.1.1.1, 198.51.100.1, 10.0.0.3",), "10.0.0.0/8,::1", "198.51.100.1"),
        # Garbage where our proxy's entry should be: the proxy is all we can vouch for.
        ("10.0.0.2", ("1.1.1.1, not-an-address",), "10.0.0.0/8", "10.0.0.2"),
        # Every hop ours (a health check from inside): the farthest.
        ("10.0.0.2", ("10.0.0.4",), "10.0.0.0/8", "10.0.0.4"),
        ("::1", ("2001:db8::7",), "::1", "2001:db8::7"),
    ],
)
def test_client_address(peer: str, forwarded: tuple[str, ...], trusted: str, client: str) -> None:
    assert client_address(request(peer, *forwarded, trusted=trusted)) == client


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings(trusted_proxies="10.0.0.0/8,proxy.internal")  # type: ignore[arg-type]
