"""A screenshot of the web page serving a given model, for the README.

Usage: python scripts/web_page_screenshot.py --model RUN/best --out docs/images/web-page-digits.png \
           [--model-name NAME] [--tta d4] [--top-k 5] IMAGE [IMAGE ...]

Starts `vitkit serve` on a free loopback port, opens the page in Debian's chromium (Playwright,
as tests/test_web_page.py does), drops the images on it, waits for every card's answer and saves
a full-page screenshot. The README's screenshots come from models vitkit trained (see its
"Serving" and multi-label sections for the commands).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    import httpx

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"vitkit serve exited with {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("vitkit serve was not ready in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--tta", default="none")
    parser.add_argument("--top-k", default="5", choices=["3", "5", "10"])
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "vitkit", "serve", "--model", args.model, "--port", str(port)]
    command += ["--device", "cpu", "--tta", args.tta, "--log-level", "warning"]
    if args.model_name:
        command += ["--model-name", args.model_name]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_ready(url, process)
        chromium = (
            os.environ.get("VITKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
        )
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": args.width, "height": 800},
            )
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#labels-box:not([hidden])")
            page.select_option("#top-k", args.top_k)
            page.set_input_files("#file", [str(path) for path in args.images])
            page.wait_for_function(
                "n => document.querySelectorAll('.card .row, .card .error').length >= n",
                arg=len(args.images),
            )
            page.wait_for_selector(".card[aria-busy]", state="detached")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            context.close()
        print(f"wrote {args.out}")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
