"""schemathesis ``--checks all`` against a running vitkit service: the OpenAPI description is
what the service does (statuses, error bodies, content types, 405 + Allow, HEAD), for every
route family (the seed route, /v1, the Open Inference Protocol's /v2) of a service with two
models (a classifier and an embedder) behind API keys.

The service runs in this process under uvicorn on 127.0.0.1 (a real server, real HTTP); the
schemathesis CLI runs against it as a subprocess, with the key (its ``ignored_auth`` check sends
requests without it too, which must get 401). URL fetches stay on loopback: fetch_into is
replaced by the real URL parsing and address checks, after which a URL is refused, never
contacted. Bounded: a fixed seed and example count.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import vitkit.serve.uploads as serve_uploads
from test_serve_support import free_port, save_tiny_checkpoint
from vitkit.errors import URLNotAllowedError
from vitkit.images.fetch import FetchPolicy, _parse, resolve_checked
from vitkit.inference.classifier import load
from vitkit.serve import ServeSettings, create_app

CONFIG = Path(__file__).with_name("schemathesis.toml")
KEY = "schema-test-key-0123456789abcdef"


async def no_traffic_fetch(url: str, sink: Any, **options: Any) -> int:
    """The real URL parsing and address checks (names resolve to a private address); a URL
    that passes them is refused here instead of being contacted."""
    parsed = _parse(url)
    resolve_checked(parsed.host, parsed.port or 80, FetchPolicy(resolver=lambda h, p: ["10.1.2.3"]))
    raise URLNotAllowedError(f"{url}: (test) a public address, not contacted from the tests")


@pytest.fixture(scope="module")
def service_url(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("schema-tiny")
    save_tiny_checkpoint(directory / "classifier")
    save_tiny_checkpoint(directory / "embedder", head=False)
    keys = directory / "keys.txt"
    keys.write_text(f"tester:{KEY}\n")
    monkeypatch_module.setattr(serve_uploads, "fetch_into", no_traffic_fetch)
    settings = ServeSettings(
        max_batch_size=4,
        max_image_bytes=300_000,
        max_pixels=4_000_000,
        api_keys=str(keys),
        # schemathesis sends wrong keys on purpose from one address: let it, so that it sees
        # the 401s it checks for (the default blocks an address after 10 wrong keys a minute)
        key_failures="100000/min",
    )
    models = {
        "cats": load(directory / "classifier", device="cpu"),
        "vectors": load(directory / "embedder", device="cpu"),
    }
    app = create_app(models, settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/readyz", trust_env=False).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def schemathesis_command() -> list[str]:
    found = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    if not Path(found).exists():
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    return [found]


def test_schemathesis_all_checks_pass(service_url: str, tmp_path: Path) -> None:
    command = [
        *schemathesis_command(),
        "--config-file", str(CONFIG),
        "run", f"{service_url}/openapi.json",
        "--checks", "all",
        "--max-examples", "10",
        "--seed", "18",
        "--workers", "2",
        "--request-timeout", "20",
        "--header", f"Authorization: Bearer {KEY}",
        "--no-color",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    start = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    report = result.stdout + result.stderr
    failures = report[report.find("= FAILURES =") :] if "= FAILURES =" in report else report
    assert result.returncode == 0, failures[:8000]
    # every operation (GET/HEAD/POST): the seed route, /v1 (/v1/segment too), /v2, probes, metrics
    assert re.search(r"Tested: 25\b", report), report[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 200, report[-3000:]
    assert time.monotonic() - start < 90, "keep this run bounded (<= 60 s in CI)"
