"""The egress guard: which addresses the gateway may connect to when it fetches or calls back a URL.

Every URL a client hands us (`image_urls`, webhook callbacks) is a server-side request forgery
vector: unguarded, it could make the gateway read cloud metadata at 169.254.169.254, admin ports
on localhost, or anything on the private network. Two checks close that:

* `EgressGuard.check_url` refuses odd schemes, credentials and non-public literal IPs. It needs no
  DNS, and it must run before every request and redirect hop: aiohttp never asks the resolver
  about a literal IP.
* `GuardedResolver` vets what a host name resolves to, inside the connector, on the very addresses
  aiohttp then connects to, so a DNS answer that changes between a check and the connect
  (rebinding) gains nothing.

`GuardedHttp` combines both for the two things the gateway does with such URLs: fetch a bounded
body, and post a callback. Its `vet` applies the same policy when a URL is handed over (a task's
callback and input images, used minutes later), so `http://localhost/` is refused then, as
`http://127.0.0.1/` is; the connect still checks again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import unquote

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from nanogate.core.redact import scrub

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_POLICY = (
    "the gateway does not connect to private, loopback, link-local or multicast addresses "
    "unless they are on the egress allow-list"
)
# How long `vet` waits for DNS: a client is waiting for its create call's answer.
VET_RESOLVE_TIMEOUT_S = 5.0
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT: neither private nor global
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# The URL standard (and socket.inet_aton) read a host whose last label is a number as IPv4.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)
_HOSTNAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
# Images are compressed already; asking for no transfer encoding keeps a gzip bomb from being
# the natural answer (aiohttp would still inflate one, and max_bytes counts inflated bytes).
_IDENTITY = {"Accept-Encoding": "identity"}


class EgressRefused(Exception):
    """The URL points somewhere the gateway will not connect to; the message says why."""


class FetchFailed(Exception):
    """A guarded request did not produce a usable answer; `status` is set for HTTP errors."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FetchTooLarge(FetchFailed):
    """The body declared or streamed more than `max_bytes` (callers may answer 413)."""


class EgressGuard:
    """The policy: public addresses, plus an operator's allow-list of names, IPs and CIDRs."""

    def __init__(self, allowlist: Sequence[str] = ()) -> None:
        if isinstance(allowlist, str):
            # A lone string is a Sequence[str] too; iterating its characters is never intended.
            raise TypeError("the egress allow-list must be a list of entries, not one string")
        self._names: set[str] = set()
        self._networks: list[_Network] = []
        for entry in allowlist:
            network = _parse_network(entry)
            if network is not None:
                self._networks.append(network)
            else:
                self._names.add(_parse_name(entry))

    def check_url(self, url: str | URL) -> None:
        """Refuse a URL that is not plain http(s) or names a non-public literal IP. No DNS."""
        parsed = _parse_url(url)
        host = scrub(parsed.raw_host, 80) if parsed.raw_host else None
        if parsed.scheme not in ("http", "https"):
            subject = f"{host} uses" if host else "the URL has"
            scheme = f"scheme {parsed.scheme}" if parsed.scheme else "no scheme"
            raise EgressRefused(f"{subject} {scheme}; only http and https URLs are accepted")
        if not host:
            raise EgressRefused("the URL has no host; send an absolute URL like https://host/path")
        if parsed.raw_user is not None or parsed.raw_password is not None:
            raise EgressRefused(
                f"{host} is given with credentials (user:password@); "
                "URLs with credentials are not accepted"
            )
        ip = _literal_ip(parsed.raw_host or "")
        if ip is not None:
            reason = self.blocked_reason(ip)
            if reason is not None:
                raise _refused(f"{ip} is", reason, str(ip))

    def allowed_ip(self, ip: str | IPAddress, hostname: str | None = None) -> bool:
        """Whether the gateway may connect to `ip`, reached by `hostname` if it came from DNS."""
        return self.blocked_reason(ip, hostname) is None

    def blocked_reason(self, ip: str | IPAddress, hostname: str | None = None) -> str | None:
        """Why `ip` is refused ("loopback", "private", ...), or None when it is allowed."""
        if hostname is not None and _normalize_name(hostname) in self._names:
            return None
        try:
            addr = ip if not isinstance(ip, str) else ipaddress.ip_address(ip)
        except ValueError:
            return "unrecognised"
        inner = _embedded_ipv4(addr)
        if any(a in net for a in (addr, inner) if a is not None for net in self._networks):
            return None
        # Mapped, NAT64 and 6to4 addresses reach the IPv4 address they embed: judge that one.
        return _blocked_kind(inner if inner is not None else addr)


class _ResolveRefused(OSError):
    """The resolver's refusal. An OSError, because that is what aiohttp expects a resolver to
    raise; it arrives wrapped in a ClientConnectorError, and GuardedHttp unwraps it."""

    def __init__(self, refusal: EgressRefused) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


class GuardedResolver(AbstractResolver):
    """Resolve with an inner resolver, then refuse the whole answer if any address is blocked.

    Refusing rather than filtering means a name that mixes public and private records (a
    classic rebinding set-up) never reaches the private one.
    """

    def __init__(self, guard: EgressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = self._guard.blocked_reason(result["host"], hostname=host)
            if reason is not None:
                # The address itself stays out of the message: it would let a client map
                # internal DNS names to internal addresses.
                name = host.rstrip(".")
                raise _ResolveRefused(_refused(f"{name} resolves to", reason, name))
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str  # after redirects
    status: int
    data: bytes
    content_type: str | None  # the media type the server claimed, lower-cased, without params


class GuardedHttp:
    """One pooled aiohttp session whose every connection passes the egress guard."""

    def __init__(
        self, guard: EgressGuard, *, max_connections: int = 32, user_agent: str = "nanogate"
    ) -> None:
        self.guard = guard
        self._max_connections = max_connections
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None

    async def vet(self, url: str, *, timeout_s: float = VET_RESOLVE_TIMEOUT_S) -> None:
        """Refuse `url` now as a connect would: `check_url`, then a host name is resolved and
        every address it has must pass. For URLs used later (callbacks, a task's input images);
        the later connect checks again, since a DNS answer can change in between."""
        parsed = self._checked(url)
        host = parsed.raw_host or ""
        if _literal_ip(host) is not None:
            return  # check_url judged it already
        name = scrub(host.rstrip("."), 80)
        resolver = self._guarded_resolver()
        try:
            async with asyncio.timeout(timeout_s):
                await resolver.resolve(host, parsed.port or 0, socket.AF_UNSPEC)
        except _ResolveRefused as exc:
            raise exc.refusal from None
        except TimeoutError:
            raise EgressRefused(
                f"{name} did not resolve within {timeout_s:g} s; check the host name"
            ) from None
        except OSError:
            raise EgressRefused(
                f"{name} does not resolve to any address; check the host name"
            ) from None

    async def fetch(
        self, url: str, *, max_bytes: int, timeout_s: float, max_redirects: int = 5
    ) -> Fetched:
        """GET `url`, following up to `max_redirects` guarded redirects, within one deadline."""
        current = self._checked(url)
        origin = current.raw_host
        try:
            async with asyncio.timeout(timeout_s):
                for _ in range(max_redirects + 1):
                    async with self._http().get(
                        current, allow_redirects=False, headers=_IDENTITY
                    ) as resp:
                        location = resp.headers.get("Location")
                        if resp.status in _REDIRECTS and location:
                            current = self._redirect_target(current, location, origin)
                            continue
                        if not 200 <= resp.status < 300:
                            raise FetchFailed(
                                f"{_display(current)} answered {resp.status}", status=resp.status
                            )
                        data = await _read_capped(resp, max_bytes, current)
                        return Fetched(str(current), resp.status, data, _media_type(resp))
        except TimeoutError:
            raise FetchFailed(
                f"{_display(current)} did not answer within {timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise _translated(exc, current, origin) from None
        raise FetchFailed(f"{_display(current)} redirected more than {max_redirects} times")

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> int:
        """POST `body` once and return the status; a 3xx is returned, never followed."""
        target = self._checked(url)
        try:
            async with (
                asyncio.timeout(timeout_s),
                self._http().post(
                    target, data=body, headers=dict(headers), allow_redirects=False
                ) as resp,
            ):
                return resp.status
        except TimeoutError:
            raise FetchFailed(f"{_display(target)} did not answer within {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise _translated(exc, target, target.raw_host) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            # The connector leaves a resolver it was handed to its owner.
            await self._resolver.close()
            self._resolver = None

    def _checked(self, url: str | URL) -> URL:
        parsed = _parse_url(url)
        self.guard.check_url(parsed)
        return parsed

    def _redirect_target(self, current: URL, location: str, origin: str | None) -> URL:
        try:
            target = current.join(URL(location))
        except ValueError:
            raise FetchFailed(f"{_display(current)} redirected to an invalid URL") from None
        try:
            self.guard.check_url(target)
        except EgressRefused as exc:
            raise EgressRefused(f"{origin} redirected to a refused URL: {exc}") from None
        return target

    def _guarded_resolver(self) -> GuardedResolver:
        # Created lazily, like the session: the threaded resolver binds to the running loop.
        if self._resolver is None:
            self._resolver = GuardedResolver(self.guard)
        return self._resolver

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=self._guarded_resolver(), limit=self._max_connections
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # Deadlines come from asyncio.timeout around each call, covering every hop.
                timeout=aiohttp.ClientTimeout(total=None),
                # Cookies set while fetching one client's URL must never ride along on another's.
                cookie_jar=aiohttp.DummyCookieJar(),
                # An environment proxy would connect on our behalf, out of the guard's sight.
                trust_env=False,
                headers={"User-Agent": self._user_agent},
            )
        return self._session


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int, url: URL) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > max_bytes:
        raise FetchTooLarge(
            f"{_display(url)} is {_size(declared)}, over the {_size(max_bytes)} limit"
        )
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise FetchTooLarge(f"{_display(url)} is larger than the {_size(max_bytes)} limit")
    return bytes(body)


def _translated(exc: aiohttp.ClientError, url: URL, origin: str | None) -> Exception:
    """A short, safe exception for an aiohttp failure (its own messages can carry the URL)."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, _ResolveRefused):
        refusal = exc.os_error.refusal
        if url.raw_host != origin:
            return EgressRefused(f"{origin} redirected to a refused URL: {refusal}")
        return refusal
    where = _display(url)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return FetchFailed(f"{where} failed the TLS handshake (certificate or protocol error)")
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return FetchFailed(f"{where} could not be reached: its host name does not resolve")
        # Only the errno's text: strerror can name the resolved address, which stays private.
        detail = f" ({os.strerror(exc.errno).lower()})" if exc.errno else ""
        return FetchFailed(f"{where} could not be reached{detail}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return FetchFailed(f"{where} closed the connection mid-response")
    if isinstance(exc, aiohttp.InvalidURL):
        return FetchFailed(f"{where} is not a URL the gateway can connect to")
    return FetchFailed(f"{where} failed ({type(exc).__name__})")


def _parse_url(url: str | URL) -> URL:
    if isinstance(url, URL):
        return url
    try:
        return URL(url)
    except (ValueError, TypeError):
        raise EgressRefused(
            "the URL cannot be parsed; send an absolute http or https URL"
        ) from None


def _literal_ip(host: str) -> IPAddress | None:
    """The IP a host names literally, None for a DNS name. Refuses the odd numeric forms
    (2130706433, 0x7f.1, 127.1) that sockets still read as IPv4 but a reader would not."""
    bare = host.rstrip(".")
    if ":" in bare:  # aiohttp takes any host with a colon for an IPv6 address and skips DNS
        try:
            return ipaddress.ip_address(unquote(bare))
        except ValueError:
            raise EgressRefused(f"{scrub(host, 80)} is not a valid IPv6 address") from None
    if not _NUMERIC_LABEL.fullmatch(bare.rsplit(".", 1)[-1]):
        return None
    try:
        return ipaddress.IPv4Address(bare)
    except ValueError:
        raise EgressRefused(
            f"{scrub(host, 80)} is not a canonical IPv4 address; "
            "write it as four decimal numbers, like 203.0.113.7"
        ) from None


def _embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(addr, ipaddress.IPv4Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:  # DNS64 hands these out on IPv6-only hosts; they reach the IPv4 inside
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def _blocked_kind(addr: IPAddress) -> str | None:
    # The order picks the most telling name: 127.0.0.1 is "loopback" though also "private".
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:  # is_global alone would let IPv4 multicast through
        return "multicast"
    if addr in _SHARED:
        return "shared (carrier-grade NAT)"
    if addr.is_reserved:
        return "reserved"
    if addr.is_private:
        return "private"
    if not addr.is_global:
        return "non-public"
    return None


def _article(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _refused(subject: str, kind: str, entry: str) -> EgressRefused:
    """The refusal of a blocked address, saying which setting lets it through and how: a
    newcomer's own receiver or file server on localhost is the usual case."""
    return EgressRefused(
        f"{subject} {_article(kind)} address; {_POLICY}. To allow it, the gateway's operator "
        f"adds it to the egress_allowlist setting (environment: NANOGATE_EGRESS_ALLOWLIST={entry}"
        "; comma-separated hosts, IPs or CIDRs) and restarts the gateway"
    )


def _parse_network(entry: str) -> _Network | None:
    try:
        return ipaddress.ip_network(entry.strip().strip("[]"), strict=False)
    except ValueError:
        return None


def _parse_name(entry: str) -> str:
    name = _normalize_name(entry)
    if not _HOSTNAME.fullmatch(name) or _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        raise ValueError(
            f"egress allow-list entry {entry!r} is not a hostname, IP address or CIDR "
            "(examples: files.example.com, 10.0.0.5, 10.0.0.0/8)"
        )
    return name


def _normalize_name(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return name
    return name


def _display(url: URL) -> str:
    """The URL as it may appear in a message: no credentials, query or fragment (they can hold
    tokens), scrubbed and capped."""
    bare = url.with_user(None).with_query(None).with_fragment(None)
    return scrub(str(bare), 160)


def _media_type(resp: aiohttp.ClientResponse) -> str | None:
    header = resp.headers.get("Content-Type")
    if not header:
        return None
    return header.split(";", 1)[0].strip().lower() or None


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("MB", 10**6), ("KiB", 1 << 10), ("kB", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
