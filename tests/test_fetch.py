"""vitkit.images.fetch: the SSRF guard, pinned connections, byte cap, timeouts and redirects.

Only loopback traffic: non-loopback addresses are exercised through the address check with a
resolver that returns them, and refused before any connection is made.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import ssl
import time
from pathlib import Path

import pytest

from test_serve_support import image_server, make_tls_files, photo_bytes, silent_server
from vitkit.errors import FetchError, FetchTimeoutError, FetchTooLargeError, URLNotAllowedError
from vitkit.images.fetch import (
    BadURLError,
    FetchLimiter,
    FetchPolicy,
    address_refusal,
    fetch_into,
    fetch_url,
    hosts_from,
    is_localhost_name,
    resolve_checked,
)

REFUSED = [
    "127.0.0.1",
    "127.255.0.9",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # documentation range
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "2002:7f00:1::",  # 6to4 around 127.0.0.1
    "2002:a00:1::",  # 6to4 around 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
    "64:ff9b:1::1",  # local-use NAT64
    "2001:db8::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::"]


@pytest.mark.parametrize("text", REFUSED)
def test_non_public_addresses_are_refused(text: str) -> None:
    assert address_refusal(ipaddress.ip_address(text)) is not None


@pytest.mark.parametrize("text", ALLOWED)
def test_public_addresses_pass(text: str) -> None:
    assert address_refusal(ipaddress.ip_address(text)) is None


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} must not be resolved (tests never leave loopback)")


def fixed_resolver(table: dict[str, list[str]]):
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    "answers",
    [["10.0.0.1"], ["169.254.169.254"], ["93.184.216.34", "127.0.0.1"], ["::ffff:10.1.2.3"]],
)
def test_a_name_with_any_private_record_is_refused(answers: list[str]) -> None:
    policy = FetchPolicy(resolver=fixed_resolver({"images.example": answers}))
    with pytest.raises(URLNotAllowedError, match=r"images\.example"):
        fetch_url("http://images.example/cat.jpg", policy=policy)


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",  # decimal
        "http://0x7f000001/",  # hex
        "http://0177.0.0.1/",  # octal
        "http://0x7f.1/",
        "http://127.1/",
        "http://0/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://0.0.0.0:8000/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
    ],
)
def test_numeric_and_literal_hosts_are_normalised_and_refused(url: str) -> None:
    # httpx itself rejects some spellings (0177.0.0.1) as malformed: also a 400, also refused.
    with pytest.raises((URLNotAllowedError, BadURLError)) as caught:
        fetch_url(url, policy=FetchPolicy(resolver=no_dns))
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x.jpg", "gopher://x/", "data:,hi", "//x/y"]
)
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(URLNotAllowedError, match="only http"):
        fetch_url(url, policy=FetchPolicy(resolver=no_dns))


@pytest.mark.parametrize(
    "url", ["http://", "http://:80/", "http://exa mple.com/", "http://x:99999/"]
)
def test_malformed_urls_are_bad_input(url: str) -> None:
    with pytest.raises((BadURLError, URLNotAllowedError)):
        fetch_url(url, policy=FetchPolicy(resolver=no_dns))


def test_loopback_is_refused_by_default_and_allowed_by_allowlist() -> None:
    image = photo_bytes()
    with image_server(image) as base:
        with pytest.raises(URLNotAllowedError, match="loopback"):
            fetch_url(f"{base}/image.jpg")
        allowed = FetchPolicy(allowlist=hosts_from(["127.0.0.1"]))
        assert fetch_url(f"{base}/image.jpg", policy=allowed) == image
        assert fetch_url(f"{base}/image.jpg", policy=FetchPolicy(allow_private=True)) == image


def test_connection_goes_to_the_checked_address_with_the_original_host_header() -> None:
    # "pinned.test" does not exist in DNS: the fetch can only succeed if it connects to the
    # address the (injected) resolver returned, and resolves exactly once.
    with image_server() as base:
        port = base.rsplit(":", 1)[1]
        resolver = fixed_resolver({"pinned.test": ["127.0.0.1"]})
        policy = FetchPolicy(allowlist=frozenset({"pinned.test"}), resolver=resolver)
        body = fetch_url(f"http://pinned.test:{port}/host", policy=policy)
        assert body == f"pinned.test:{port}".encode()
        assert resolver.calls == ["pinned.test"]


def test_https_requests_carry_the_original_name_for_sni() -> None:
    import httpx

    from vitkit.images.fetch import _Pinned

    with httpx.Client() as client:
        request = _Pinned(
            client, httpx.URL("https://img.example:8443/a.jpg"), "93.184.216.34"
        ).request
    assert request.url.host == "93.184.216.34"
    assert request.headers["host"] == "img.example:8443"
    assert request.extensions["sni_hostname"] == "img.example"


def test_https_to_the_pinned_address_sends_sni_and_verifies_the_original_name(
    tmp_path: Path,
) -> None:
    ca, cert, key = make_tls_files(tmp_path, "img.test")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    names_seen: list[str | None] = []
    server_context.sni_callback = lambda sock, name, context: names_seen.append(name)
    client_context = ssl.create_default_context(cafile=str(ca))
    with image_server(tls=server_context) as base:
        port = base.rsplit(":", 1)[1]
        resolver = fixed_resolver({"img.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        policy = FetchPolicy(
            allowlist=frozenset({"img.test", "other.test"}),
            resolver=resolver,
            verify=client_context,
        )
        # "img.test" exists only in the injected resolver: TLS to 127.0.0.1 with SNI img.test.
        assert (
            fetch_url(f"https://img.test:{port}/host", policy=policy) == f"img.test:{port}".encode()
        )
        assert names_seen == ["img.test"]
        # The certificate is checked against the URL's name, not the address connected to.
        with pytest.raises(FetchError, match=r"other\.test"):
            fetch_url(f"https://other.test:{port}/host", policy=policy)


def test_redirect_from_allowed_host_to_private_host_is_refused() -> None:
    policy = FetchPolicy(allowlist=frozenset({"127.0.0.1"}))
    with image_server() as base:
        port = base.rsplit(":", 1)[1]
        for target in [
            "http://10.0.0.1/x.jpg",
            "http://169.254.169.254/latest/",
            f"http://localhost:{port}/image.jpg",
            f"http://[::1]:{port}/image.jpg",
            "file:///etc/passwd",
        ]:
            with pytest.raises(URLNotAllowedError):
                fetch_url(f"{base}/redirect?to={target}", policy=policy)
        # and an allowed redirect is followed
        assert fetch_url(f"{base}/redirect?to=/image.jpg", policy=policy) == photo_bytes()


def test_redirect_limit() -> None:
    policy = FetchPolicy(allowlist=frozenset({"127.0.0.1"}), max_redirects=3)
    with image_server() as base, pytest.raises(FetchError, match="redirected more than 3"):
        fetch_url(f"{base}/loop", policy=policy)


def test_byte_cap_is_enforced_while_streaming() -> None:
    policy = FetchPolicy(allow_private=True, max_bytes=200_000, total_timeout=20)
    with image_server() as base:
        start = time.monotonic()
        with pytest.raises(FetchTooLargeError, match="200,000-byte limit"):
            fetch_url(f"{base}/forever", policy=policy)
        assert time.monotonic() - start < 5  # stopped at the cap, not at the server's end
        with pytest.raises(FetchTooLargeError):  # declared too large: refused before reading
            fetch_url(f"{base}/big", policy=policy)
        assert FetchTooLargeError.http_status == 413


def test_a_server_that_never_answers_times_out() -> None:
    policy = FetchPolicy(allow_private=True, read_timeout=0.5, connect_timeout=0.5)
    with silent_server() as base:
        start = time.monotonic()
        with pytest.raises(FetchTimeoutError):
            fetch_url(f"{base}/x.jpg", policy=policy)
        assert time.monotonic() - start < 3


def test_total_deadline_stops_a_trickling_server() -> None:
    policy = FetchPolicy(allow_private=True, read_timeout=2, total_timeout=0.8)
    with image_server() as base:
        start = time.monotonic()
        with pytest.raises(FetchTimeoutError, match=r"longer than 0\.8 s"):
            fetch_url(f"{base}/trickle", policy=policy)
        assert time.monotonic() - start < 3


def test_upstream_errors_and_refused_connections() -> None:
    policy = FetchPolicy(allow_private=True, connect_timeout=1)
    with image_server() as base, pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(f"{base}/missing", policy=policy)
    with pytest.raises(FetchError, match="cannot connect"):  # the server above is gone
        fetch_url(f"{base}/image.jpg", policy=policy)


def test_hosts_from_splits_commas_and_repeats() -> None:
    assert hosts_from(["a.example,B.example", " c "]) == {"a.example", "b.example", "c"}
    assert resolve_checked(
        "b.example",
        80,
        FetchPolicy(
            allowlist=hosts_from(["B.example"]),
            resolver=fixed_resolver({"b.example": ["10.0.0.1"]}),
        ),
    ) == ["10.0.0.1"]


# ---- RFC 6761 localhost names ----------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/x.jpg",
        "http://localhost./x.jpg",
        "http://LOCALHOST:8080/x.jpg",
        "http://images.localhost/x.jpg",
        "http://images.localhost./x.jpg",
        "https://a.b.LocalHost./x.jpg",
    ],
)
def test_localhost_names_are_refused_before_any_lookup(url: str) -> None:
    with pytest.raises(URLNotAllowedError, match="localhost names"):
        fetch_url(url, policy=FetchPolicy(resolver=no_dns))
    with pytest.raises(URLNotAllowedError, match="localhost names"):
        asyncio.run(fetch_into(url, io.BytesIO(), policy=FetchPolicy(resolver=no_dns)))


def test_localhost_names_follow_the_allowlist_and_other_names_are_not_caught() -> None:
    assert is_localhost_name("localhost.") and is_localhost_name("x.localhost")
    assert not is_localhost_name("localhost.example.com") and not is_localhost_name("mylocalhost")
    resolver = fixed_resolver({"localhost": ["127.0.0.1"]})
    allowed = FetchPolicy(allowlist=hosts_from(["localhost."]), resolver=resolver)
    assert resolve_checked("localhost", 80, allowed) == ["127.0.0.1"]
    assert resolver.calls == ["localhost"]  # looked up only once the operator allowed it


# ---- fetching on an event loop ---------------------------------------------------------------
def test_fetch_into_streams_the_body_and_checks_like_fetch_url() -> None:
    image = photo_bytes("coffee")
    allowed = FetchPolicy(allowlist=hosts_from(["127.0.0.1"]))
    with image_server(image) as base:
        sink = io.BytesIO()
        assert asyncio.run(fetch_into(f"{base}/redirect?to=/image.jpg", sink, policy=allowed))
        assert sink.getvalue() == image
        with pytest.raises(URLNotAllowedError, match="loopback"):
            asyncio.run(fetch_into(f"{base}/image.jpg", io.BytesIO()))
        capped = FetchPolicy(allow_private=True, max_bytes=100_000)
        with pytest.raises(FetchTooLargeError):
            asyncio.run(fetch_into(f"{base}/forever", io.BytesIO(), policy=capped))
        with pytest.raises(FetchError, match="HTTP 404"):
            asyncio.run(fetch_into(f"{base}/missing", io.BytesIO(), policy=allowed))


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_trickling_server_is_cut_off_by_the_minimum_rate(asynchronous: bool) -> None:
    """/trickle sends 10 bytes/s: under a 1,000 bytes/s minimum it ends after the 1 s grace
    period, long before the 20 s total deadline."""
    policy = FetchPolicy(allow_private=True, total_timeout=20, min_rate=1000, rate_grace=1.0)
    with image_server() as base:
        start = time.monotonic()
        with pytest.raises(FetchTimeoutError, match="minimum rate"):
            if asynchronous:
                asyncio.run(fetch_into(f"{base}/trickle", io.BytesIO(), policy=policy))
            else:
                fetch_url(f"{base}/trickle", policy=policy)
        assert time.monotonic() - start < 3


def test_fetch_limiter_caps_transfers_per_upstream_and_in_all() -> None:
    async def main() -> tuple[int, int, int]:
        limiter = FetchLimiter(per_address=2, total=3)
        inside: dict[str, int] = {}
        most = {"a": 0, "b": 0, "all": 0}

        async def transfer(address: str) -> None:
            async with limiter.slot(address, 80):
                inside[address] = inside.get(address, 0) + 1
                most[address] = max(most[address], inside[address])
                most["all"] = max(most["all"], sum(inside.values()))
                await asyncio.sleep(0.02)
                inside[address] -= 1

        await asyncio.gather(*(transfer(a) for a in ["a"] * 6 + ["b"] * 6))
        return most["a"], most["b"], most["all"]

    assert asyncio.run(main()) == (2, 2, 3)
