"""Fetch an image URL safely: the SSRF guard, timeouts, a byte cap and a redirect limit.

A server that fetches URLs for its users is a proxy into its own network unless it refuses
addresses the user should not reach. ``fetch_url`` therefore:

- accepts only ``http`` and ``https`` URLs;
- resolves the host itself (all A and AAAA records; numeric forms such as ``2130706433`` or
  ``0x7f.1`` are normalised first) and refuses the URL if ANY resolved address is private,
  loopback, link-local, multicast, reserved, unspecified, shared (100.64/10) or otherwise not
  globally reachable, including IPv4 addresses embedded in IPv6 ones (IPv4-mapped ``::ffff:``,
  IPv4-compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) -- unless the policy
  allows private addresses or the host is on its allowlist;
- connects to the address it checked, never resolving the name a second time (see ``_Pinned``);
- follows at most ``max_redirects`` redirects itself, checking every hop the same way;
- refuses RFC 6761 ``localhost`` names (``localhost``, ``*.localhost``, with or without the
  trailing dot) before any DNS lookup: they must never leave the host;
- enforces connect and read timeouts, a total deadline and a minimum transfer rate (after a grace
  period), and counts bytes while streaming, stopping as soon as the cap is passed (a server that
  sends forever costs ``max_bytes``; one that trickles is cut off after the grace period).

``fetch_url`` is the blocking client (the library's URL inputs); ``fetch_into`` is the same
fetch for an event loop (the server): no thread per transfer, so slow upstreams cannot use up a
pool that good URLs need, and a ``FetchLimiter`` caps transfers per upstream address and in all.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, NoReturn
from urllib.parse import urljoin

import httpx

from vitkit.errors import (
    BadURLError,
    FetchError,
    FetchTimeoutError,
    FetchTooLargeError,
    URLNotAllowedError,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""(host, port) -> the IP address strings the host resolves to (A and AAAA)."""

_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# Host names after IDNA encoding (httpx does that), or IPv6 literals (hex digits and colons).
_HOST_CHARACTERS = re.compile(r"[A-Za-z0-9._-]{1,253}|[0-9A-Fa-f:.]+(%[A-Za-z0-9]+)?")


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses (IPv4 and IPv6) the system resolver gives for ``host``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise FetchError(f"cannot resolve host {host!r}: {error}") from error
    # sockaddr[0] is the address; IPv6 ones may carry a "%scope" suffix.
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


@dataclass(frozen=True)
class FetchPolicy:
    """What ``fetch_url`` may fetch, and how long and how much it may take.

    ``allowlist`` names hosts (as written in URLs, case-insensitive) exempt from the address
    check, for internal image stores; ``allow_private`` exempts every host. Neither relaxes the
    scheme check, the byte cap, the timeouts or the redirect limit. Redirect targets are checked
    on their own name: an allowed host that redirects to a private one is refused.

    ``min_rate``: after ``rate_grace`` seconds, a transfer that has averaged fewer bytes per
    second since it started is cut off (``FetchTimeoutError``); 0 turns the check off.
    """

    max_bytes: int = 20 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    min_rate: float = 16 * 1024
    rate_grace: float = 5.0
    max_redirects: int = 5
    allow_private: bool = False
    allowlist: frozenset[str] = field(default_factory=frozenset)
    resolver: Resolver = system_resolver
    # TLS verification: True (certifi's CAs) or an ssl.SSLContext, e.g. one trusting an
    # internal CA. Certificates are always checked against the URL's host name.
    verify: ssl.SSLContext | bool = True

    def allows_host(self, host: str) -> bool:
        return self.allow_private or _host_key(host) in {_host_key(name) for name in self.allowlist}


def _host_key(host: str) -> str:
    """A host name as compared: lower case, no IPv6 brackets, no trailing root dot."""
    return host.lower().strip("[]").rstrip(".")


def is_localhost_name(host: str) -> bool:
    """RFC 6761 section 6.3: ``localhost`` and every name under it mean this machine."""
    name = _host_key(host)
    return name == "localhost" or name.endswith(".localhost")


# ---- the address check -----------------------------------------------------------------


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # local-use NAT64


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    packed = int(address)
    if packed >> 32 == 0 and packed > 1:  # ::a.b.c.d (deprecated IPv4-compatible form)
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if address in _NAT64:
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if address in _LOCAL_NAT64:  # never public
        return ipaddress.IPv4Address("0.0.0.0")
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be fetched from, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = address_refusal(embedded)
            return f"embeds {embedded}, which is {reason}" if reason else None
    checks = [
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("private", address.is_private),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("not globally reachable", not address.is_global),
    ]
    return next((f"a {name} address" for name, hit in checks if hit), None)


def _numeric_ipv4(host: str) -> str | None:
    """Normalise the numeric IPv4 spellings browsers and libc accept: 2130706433, 0x7f.1, 0177.0.0.1."""
    if not host or not all(c in "0123456789abcdefxABCDEFX." for c in host):
        return None
    if not any(c.isdigit() for c in host.split(".")[-1][:1]):
        return None  # "cafe.be": a name, not a number
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def resolve_checked(host: str, port: int, policy: FetchPolicy) -> list[str]:
    """The addresses of ``host`` to connect to, all of them checked; raises if any is refused.

    Refusing when ANY address is bad (rather than picking a good one) closes the trick of a
    name with one public and one private record.
    """
    bare = host.strip("[]")
    if is_localhost_name(bare) and not policy.allows_host(host):
        raise URLNotAllowedError(
            f"refusing to fetch from {host!r}: localhost names (RFC 6761) mean this machine and "
            "are never looked up. A server operator can allow internal hosts with --allow-host "
            "HOST or --allow-private-urls"
        )
    literal = _numeric_ipv4(bare) or bare
    try:
        addresses = [str(ipaddress.ip_address(literal))]
    except ValueError:
        addresses = policy.resolver(bare, port)
    if not addresses:
        raise FetchError(f"host {host!r} resolves to no address")
    if policy.allows_host(host):
        return addresses
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError as error:
            raise URLNotAllowedError(f"host {host!r} resolved to {text!r}, not an IP") from error
        reason = address_refusal(address)
        if reason:
            raise URLNotAllowedError(
                f"refusing to fetch from {host!r}: it resolves to {address}, {reason}. "
                "Only public addresses are fetched; a server operator can allow internal hosts "
                "with --allow-host HOST or --allow-private-urls"
            )
    return addresses


# ---- fetching ----------------------------------------------------------------------------


@dataclass
class _Deadline:
    seconds: float
    start: float = field(default_factory=time.monotonic)

    def remaining(self, url: str) -> float:
        left = self.seconds - (time.monotonic() - self.start)
        if left <= 0:
            raise FetchTimeoutError(f"fetching {url} took longer than {self.seconds:g} s")
        return left


@dataclass
class _Meter:
    """Counts one body's bytes: the byte cap, the total deadline and the minimum rate."""

    url: str
    policy: FetchPolicy
    deadline: _Deadline
    received: int = 0

    def declared(self, headers: httpx.Headers) -> None:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_bytes:
            raise FetchTooLargeError(
                f"{self.url} is {int(length):,} bytes, over the {self.policy.max_bytes:,}-byte limit"
            )

    def add(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.policy.max_bytes:
            raise FetchTooLargeError(
                f"{self.url} sent more than the {self.policy.max_bytes:,}-byte limit"
            )
        self.deadline.remaining(self.url)
        if self.next_wait() <= 0:
            self.too_slow()

    def next_wait(self) -> float:
        """Seconds the next chunk may take before the transfer breaks a limit."""
        left = self.deadline.seconds - (time.monotonic() - self.deadline.start)
        if self.policy.min_rate > 0:
            # received >= min_rate * (elapsed - grace) must hold; it fails at this elapsed time:
            fails_at = self.policy.rate_grace + self.received / self.policy.min_rate
            left = min(left, fails_at - (time.monotonic() - self.deadline.start))
        return left

    def too_slow(self) -> NoReturn:
        self.deadline.remaining(self.url)  # the total deadline names itself
        elapsed = time.monotonic() - self.deadline.start
        raise FetchTimeoutError(
            f"{self.url} sent {self.received:,} bytes in {elapsed:.1f} s, under the minimum "
            f"rate of {self.policy.min_rate:,.0f} bytes/s"
        )


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise BadURLError(f"not a valid URL: {url!r} ({error})") from error
    if parsed.scheme not in ("http", "https"):
        raise URLNotAllowedError(
            f"refusing URL {url!r}: only http:// and https:// URLs are fetched"
        )
    if not parsed.host:
        raise BadURLError(f"URL {url!r} has no host")
    if not _HOST_CHARACTERS.fullmatch(parsed.host):
        # httpx percent-encodes odd characters (a space becomes %20): never send those to DNS.
        raise BadURLError(f"URL {url!r} has an invalid host name {parsed.host!r}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise BadURLError(f"URL {url!r} has an invalid port {parsed.port}")
    return parsed


class _Pinned:
    """One request sent to an already-checked IP while speaking to the original host name.

    Why this way: httpx resolves names itself at connect time, which would re-open a
    DNS-rebinding gap (the name answers a public address to our check and 127.0.0.1 to the
    connection). So the request URL carries the checked IP as its host; the ``Host`` header
    keeps the original name (virtual hosting), and for https the ``sni_hostname`` request
    extension makes httpcore send the original name as SNI and verify the certificate
    against it. ``trust_env=False`` keeps HTTP(S)_PROXY variables from routing around the pin.
    """

    def __init__(
        self, client: httpx.Client | httpx.AsyncClient, url: httpx.URL, address: str
    ) -> None:
        host_header = url.netloc.decode("ascii")
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        self.request = client.build_request(
            "GET",
            url.copy_with(host=address),
            headers={"Host": host_header, "Accept-Encoding": "identity"},
            extensions=extensions,
        )


def _read_capped(
    response: httpx.Response, url: str, policy: FetchPolicy, deadline: _Deadline
) -> bytes:
    meter = _Meter(url, policy, deadline)
    meter.declared(response.headers)
    body = bytearray()
    # iter_raw: the bytes as sent. We asked for identity encoding, so a gzip bomb cannot
    # expand past the cap; a server that compresses anyway gives bytes that will not decode.
    # No chunk_size: httpx would buffer up to it, hiding both the cap and the deadline.
    # (Blocking reads see the rate only when a chunk arrives: read_timeout bounds the wait.)
    for chunk in response.iter_raw():
        meter.add(chunk)
        body += chunk
    return bytes(body)


def _get_once(
    client: httpx.Client, url: httpx.URL, policy: FetchPolicy, deadline: _Deadline
) -> tuple[httpx.URL | None, bytes]:
    """GET one hop. Returns (redirect target, b"") or (None, body)."""
    text = str(url)
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = resolve_checked(url.host, port, policy)
    last_error: Exception | None = None
    for address in addresses:  # every one checked; try the next if one does not connect
        deadline.remaining(text)
        request = _Pinned(client, url, address).request
        try:
            response = client.send(request, stream=True)
        except httpx.ConnectError as error:
            last_error = error
            continue
        try:
            if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                return _parse(urljoin(text, response.headers["location"])), b""
            if response.status_code >= 400:
                raise FetchError(f"{text} answered HTTP {response.status_code}")
            return None, _read_capped(response, text, policy, deadline)
        finally:
            response.close()
    raise FetchError(f"cannot connect to {text}: {last_error}")


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """httpx's own default (certifi's CAs), built once: loading the CA bundle takes ~10-100 ms
    of CPU, which a server fetching for many clients would otherwise spend per fetch, on its
    event loop."""
    import certifi  # httpx's dependency; imported here since only TLS fetches need it

    return ssl.create_default_context(cafile=certifi.where())


def _tls(verify: ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    return _default_tls() if verify is True else verify


def _timeout(policy: FetchPolicy) -> httpx.Timeout:
    return httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.connect_timeout,
    )


def fetch_url(url: str, *, policy: FetchPolicy | None = None) -> bytes:
    """The body of ``url`` as bytes, fetched under ``policy`` (defaults: see ``FetchPolicy``).

    Raises ``URLNotAllowedError`` (refused scheme or address), ``BadURLError``,
    ``FetchTooLargeError``, ``FetchTimeoutError`` or ``FetchError`` (unreachable, HTTP error,
    too many redirects); each names the URL.
    """
    policy = policy or FetchPolicy()
    deadline = _Deadline(policy.total_timeout)
    current = _parse(url)
    with httpx.Client(
        timeout=_timeout(policy),
        follow_redirects=False,
        trust_env=False,
        verify=_tls(policy.verify),
    ) as client:
        for _hop in range(policy.max_redirects + 1):
            try:
                target, body = _get_once(client, current, policy, deadline)
            except httpx.TimeoutException as error:
                raise FetchTimeoutError(f"{current} timed out ({type(error).__name__})") from error
            except httpx.HTTPError as error:
                raise FetchError(f"fetching {current} failed: {error}") from error
            if target is None:
                return body
            current = target
    raise FetchError(f"{url} redirected more than {policy.max_redirects} times")


# ---- fetching on an event loop ----------------------------------------------------------


class FetchLimiter:
    """At most ``per_address`` transfers at once from one upstream (address and port) and
    ``total`` in all: a slow host holds a few slots, never every one, and the server never
    opens more than ``total`` upstream connections for its clients.
    """

    def __init__(self, per_address: int = 8, total: int = 256) -> None:
        if per_address < 1 or total < 1:
            raise ValueError("per_address and total must be >= 1")
        self.per_address = per_address
        self._total = asyncio.Semaphore(total)
        self._hosts: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._users: dict[tuple[str, int], int] = {}  # holding or waiting, per upstream

    @asynccontextmanager
    async def slot(self, address: str, port: int) -> AsyncIterator[None]:
        key = (address, port)
        host = self._hosts.setdefault(key, asyncio.Semaphore(self.per_address))
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with host, self._total:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:  # nobody left: forget the upstream
                del self._users[key], self._hosts[key]


async def fetch_into(
    url: str,
    sink: IO[bytes],
    *,
    policy: FetchPolicy | None = None,
    limiter: FetchLimiter | None = None,
) -> int:
    """Fetch ``url`` as ``fetch_url`` does, writing the body into ``sink``; the bytes written.

    For an event loop: every wait is a coroutine (name resolution runs in the loop's default
    executor), each chunk's wait is bounded by the minimum rate and the total deadline, and
    ``limiter`` (if given) caps transfers per upstream address. Raises what ``fetch_url`` does.
    """
    policy = policy or FetchPolicy()
    deadline = _Deadline(policy.total_timeout)
    current = _parse(url)
    async with httpx.AsyncClient(
        timeout=_timeout(policy),
        follow_redirects=False,
        trust_env=False,
        verify=_tls(policy.verify),
    ) as client:
        for _hop in range(policy.max_redirects + 1):
            try:
                target = await asyncio.wait_for(
                    _get_once_async(client, current, policy, deadline, sink, limiter),
                    timeout=max(deadline.remaining(str(current)), 0.0),
                )
            except (TimeoutError, httpx.TimeoutException) as error:
                raise FetchTimeoutError(
                    f"fetching {current} took longer than {policy.total_timeout:g} s"
                    if isinstance(error, asyncio.TimeoutError)
                    else f"{current} timed out ({type(error).__name__})"
                ) from error
            except httpx.HTTPError as error:
                raise FetchError(f"fetching {current} failed: {error}") from error
            if target is None:
                return sink.tell()
            current = target
    raise FetchError(f"{url} redirected more than {policy.max_redirects} times")


async def _get_once_async(
    client: httpx.AsyncClient,
    url: httpx.URL,
    policy: FetchPolicy,
    deadline: _Deadline,
    sink: IO[bytes],
    limiter: FetchLimiter | None,
) -> httpx.URL | None:
    """One hop, as ``_get_once``: the redirect target, or None once the body is in ``sink``."""
    text = str(url)
    port = url.port or (443 if url.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    addresses = await loop.run_in_executor(None, resolve_checked, url.host, port, policy)
    last_error: Exception | None = None
    for address in addresses:
        async with limiter.slot(address, port) if limiter else _no_limit():
            request = _Pinned(client, url, address).request
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectError as error:
                last_error = error
                continue
            try:
                if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                    return _parse(urljoin(text, response.headers["location"]))
                if response.status_code >= 400:
                    raise FetchError(f"{text} answered HTTP {response.status_code}")
                await _stream_capped(response, _Meter(text, policy, deadline), sink)
                return None
            finally:
                await response.aclose()
    raise FetchError(f"cannot connect to {text}: {last_error}")


@asynccontextmanager
async def _no_limit() -> AsyncIterator[None]:
    yield


async def _stream_capped(response: httpx.Response, meter: _Meter, sink: IO[bytes]) -> None:
    meter.declared(response.headers)
    sink.seek(0)
    sink.truncate()  # a redirect hop wrote nothing, but a retried address might have
    chunks = response.aiter_raw()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), timeout=max(meter.next_wait(), 0.0))
        except StopAsyncIteration:
            return
        except TimeoutError:
            meter.too_slow()
        meter.add(chunk)
        sink.write(chunk)


def hosts_from(values: Iterable[str] | None) -> frozenset[str]:
    """An allowlist from repeated/comma-separated command-line values."""
    return frozenset(
        part.strip().lower() for value in values or () for part in value.split(",") if part.strip()
    )
