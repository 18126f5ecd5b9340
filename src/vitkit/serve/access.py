"""Who may call the service, and how often: API keys and rate limits, in front of every route.

- **Keys** (``--api-keys FILE``): one per line, ``name:key`` or ``key``; held only as SHA-256
  digests, and a presented key is compared with every digest in constant time
  (``hmac.compare_digest``), so neither memory nor timing gives one away. A request carries its
  key as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; without a right one it gets 401 +
  ``WWW-Authenticate`` (as TorchServe's token authorisation does). Logs and metrics name the
  key (``name``), never the key.
- **Guessing**: wrong keys are counted per client address (``--key-failures``, a token bucket);
  past it, that address gets 429 + ``Retry-After`` before its key is even compared.
- **Rate limits** (``--rate-limit 10/s --burst 20``): a token bucket per key (per client address
  when there are no keys): 429 + ``Retry-After`` (RFC 6585) once it is empty.
- **Open routes**: liveness and readiness (``/healthz``, ``/readyz``, ``/v2/health/*``) and the
  web page with its assets (the page asks for a key itself) need no key and are never limited;
  ``/metrics`` (``--open-metrics``) and ``/docs`` + ``/openapi.json`` (``--open-docs``) by choice.

Buckets are kept for at most ``MAX_TRACKED`` clients (least recently seen dropped first), so a
flood from many addresses costs bounded memory.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit.errors import ServeSettingsError

MAX_TRACKED = 100_000
MIN_KEY_LENGTH = 16
REALM = 'Bearer realm="vitkit"'
_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_UNITS |= {"h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+?)s?\s*$")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"})
OPEN_PREFIXES = ("/static/", "/docs-assets/")
DOCS_PATHS = frozenset({"/docs", "/openapi.json"})


def parse_rate(text: str, flag: str) -> float:
    """``"10/s"``, ``"600/min"``, ``"100/hour"`` -> requests per second (> 0)."""
    match = _RATE.match(text.lower())
    per = _UNITS.get(match.group(2)) if match else None
    if match is None or per is None or float(match.group(1)) <= 0:
        raise ServeSettingsError(
            f"{flag} {text!r}: give a count per unit, e.g. 10/s, 600/min or 100/hour"
        )
    return float(match.group(1)) / per


def default_burst(rate: float) -> int:
    """Half a second's worth of requests (at least one): a page's few parallel calls pass, and
    over any window the served rate stays close to ``rate`` (5/s for 10 s: 53 served)."""
    return max(1, math.ceil(rate / 2))


class TokenBucket:
    """``rate`` tokens a second, up to ``capacity``; a request takes one."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.updated = capacity, now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def peek(self, now: float) -> float:
        """Like ``take`` but takes nothing: seconds until a token is there (0 if one is)."""
        tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


class Buckets:
    """One token bucket per client, the least recently seen dropped past ``MAX_TRACKED``."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def bucket(self, client: str, now: float) -> TokenBucket:
        found = self._buckets.get(client)
        if found is None:
            found = self._buckets[client] = TokenBucket(self.rate, self.capacity, now)
            if len(self._buckets) > MAX_TRACKED:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        return found


@dataclass(frozen=True)
class KeyRing:
    """API keys as (name, SHA-256 digest) pairs."""

    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """Read ``name:key`` / ``key`` lines (blank lines and ``#`` comments skipped)."""
        flag = f"--api-keys {path}"
        try:
            lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise ServeSettingsError(f"{flag}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ServeSettingsError(f"{flag}: cannot read it ({error})") from None
        entries: list[tuple[str, bytes]] = []
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, key = line.partition(":")
            name, key = (name.strip(), key.strip()) if sep else (f"key{len(entries) + 1}", line)
            _check_key(flag, number, name, key, {known for known, _ in entries})
            entries.append((name, _digest(key)))
        if not entries:
            raise ServeSettingsError(f"{flag}: no keys in it (one per line, 'name:key' or 'key')")
        return cls(tuple(entries))

    def name_of(self, key: str) -> str | None:
        """The name of ``key`` if it is one of ours; every digest is compared (constant time)."""
        presented = _digest(key)
        found = None
        for name, digest in self.entries:
            if hmac.compare_digest(presented, digest):
                found = name
        return found


def _check_key(flag: str, number: int, name: str, key: str, names: set[str]) -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise ServeSettingsError(
            f"{flag}, line {number}: a key of {len(key)} characters is guessable; use at least "
            f"{MIN_KEY_LENGTH}, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if not name or name in names:
        raise ServeSettingsError(f"{flag}, line {number}: give each key its own non-empty name")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries (``Authorization: Bearer`` first, else ``X-API-Key``)."""
    authorization = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


@dataclass
class Verdict:
    """What the gate decided: who the client is, or the refusal to send."""

    client: str  # the key's name, or the client address without keys ("" on open routes)
    status: int = 200
    code: str = ""
    detail: str = ""
    retry_after: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.status == 200


class AccessGate:
    """Keys, guessing and rate limits for one request (see the module docstring)."""

    def __init__(
        self,
        keys: KeyRing | None,
        rate: float | None,
        burst: int | None,
        failures_per_second: float,
        *,
        open_metrics: bool = False,
        open_docs: bool = False,
    ) -> None:
        self.keys = keys
        self.limits = None
        if rate is not None:
            self.limits = Buckets(rate, float(burst or default_burst(rate)))
        failures_burst = max(1.0, math.ceil(failures_per_second * 60))  # a minute's worth
        self.failures = Buckets(failures_per_second, failures_burst)
        self.open_paths = set(OPEN_PATHS)
        if open_metrics:
            self.open_paths.add("/metrics")
        if open_docs:
            self.open_paths |= DOCS_PATHS

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(OPEN_PREFIXES)

    def check(self, path: str, headers: dict[bytes, bytes], address: str) -> Verdict:
        if self.is_open(path):
            return Verdict(client="")
        now = time.monotonic()
        client = address
        if self.keys is not None:
            refusal, name = self._identify(headers, address, now)
            if refusal is not None:
                return refusal
            client = name
        if self.limits is not None:
            wait = self.limits.bucket(client, now).take(now)
            if wait > 0:
                return Verdict(
                    client, 429, "rate_limited",
                    f"over the rate limit for {client!r} (server option --rate-limit): "
                    f"retry in {wait:.2f} s",
                    wait,
                )  # fmt: skip
        return Verdict(client)

    def _identify(
        self, headers: dict[bytes, bytes], address: str, now: float
    ) -> tuple[Verdict | None, str]:
        assert self.keys is not None
        failures = self.failures.bucket(address, now)
        blocked = failures.peek(now)
        if blocked > 0:  # this address has guessed too often: no key is compared now
            return Verdict(
                address, 429, "too_many_key_failures",
                "too many requests with a wrong API key from this address "
                "(server option --key-failures): retry later",
                blocked,
            ), ""  # fmt: skip
        key = presented_key(headers)
        name = self.keys.name_of(key) if key else None
        if name is not None:
            return None, name
        if key:
            failures.take(now)
        detail = (
            "wrong API key" if key else "this service needs an API key"
        ) + ": send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
        return Verdict(address, 401, "unauthorized", detail), ""


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up (RFC 9110: a delay-seconds value is a non-negative integer)."""
    return str(max(1, math.ceil(seconds)))


def client_address(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
