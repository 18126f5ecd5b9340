"""The access gate on its own (no server): key files, wrong-key limits per address, token
buckets, and what each answer says. The same gate runs in front of every route (see
tests/test_serve_protocols.py for it over real HTTP)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vitkit.errors import ServeSettingsError
from vitkit.serve.access import AccessGate, KeyRing, TokenBucket, default_burst, parse_rate

ALICE = "alice-key-0123456789abcdefghij"
BOB = "bob-key-0123456789abcdefghijkl"


def ring(tmp_path: Path, text: str) -> KeyRing:
    path = tmp_path / "keys.txt"
    path.write_text(text)
    return KeyRing.from_file(path)


def bearer(key: str) -> dict[bytes, bytes]:
    return {b"authorization": f"Bearer {key}".encode()}


def test_key_file_names_keys_and_holds_only_digests(tmp_path: Path) -> None:
    keys = ring(tmp_path, f"# team\nalice:{ALICE}\n\n{BOB}\n")
    assert [name for name, _ in keys.entries] == ["alice", "key2"]
    assert keys.entries[0][1] == hashlib.sha256(ALICE.encode()).digest()
    assert ALICE not in repr(keys) and BOB not in repr(keys)
    assert keys.name_of(ALICE) == "alice" and keys.name_of(BOB) == "key2"
    assert keys.name_of(ALICE + "x") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no keys in it"),
        ("alice:short\n", "line 1: a key of 5 characters is guessable"),
        (f"alice:{ALICE}\nalice:{BOB}\n", "line 2: give each key its own non-empty name"),
    ],
)
def test_bad_key_files_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ServeSettingsError, match=message):
        ring(tmp_path, text)


def test_wrong_keys_are_limited_per_address(tmp_path: Path) -> None:
    gate = AccessGate(ring(tmp_path, f"alice:{ALICE}\n"), None, None, parse_rate("3/min", "x"))
    for _ in range(3):
        assert gate.check("/v1/predict", bearer("guess-0123456789abcdef"), "10.0.0.9").status == 401
    blocked = gate.check("/v1/predict", bearer(ALICE), "10.0.0.9")  # even the right key now
    assert (blocked.status, blocked.code) == (429, "too_many_key_failures")
    assert 0 < blocked.retry_after <= 20  # one failure's worth refills in 20 s at 3/min
    assert gate.check("/v1/predict", bearer(ALICE), "10.0.0.8").client == "alice"  # others pass
    missing = gate.check("/v1/predict", {}, "10.0.0.7")  # no key at all is not a guess
    assert missing.status == 401 and "needs an API key" in missing.detail
    assert gate.check("/healthz", {}, "10.0.0.9").allowed  # probes stay open


def test_rate_limit_is_per_key_with_its_burst(tmp_path: Path) -> None:
    keys = ring(tmp_path, f"alice:{ALICE}\nbob:{BOB}\n")
    gate = AccessGate(keys, parse_rate("2/s", "x"), None, parse_rate("10/min", "x"))
    verdicts = [gate.check("/v2", {b"x-api-key": ALICE.encode()}, "h") for _ in range(3)]
    assert [v.status for v in verdicts] == [200, 429, 429]  # burst: half a second's worth = 1
    assert verdicts[1].code == "rate_limited" and 0 < verdicts[1].retry_after <= 0.5
    assert gate.check("/v2", bearer(BOB), "h").allowed  # another key has its own bucket
    assert gate.check("/v2/health/ready", {}, "h").allowed


def test_token_bucket_and_rates() -> None:
    bucket = TokenBucket(rate=5.0, capacity=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.2)
    assert bucket.take(0.2) == 0.0  # one token back after 1/5 s
    assert parse_rate("600/min", "--rate-limit") == 10.0
    assert parse_rate("100/hour", "--rate-limit") == pytest.approx(100 / 3600)
    assert default_burst(5.0) == 3 and default_burst(0.1) == 1
    for text in ("fast", "5", "0/s", "5/fortnight"):
        with pytest.raises(ServeSettingsError, match="--rate-limit"):
            parse_rate(text, "--rate-limit")
