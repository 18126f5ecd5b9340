"""Loopback-only helpers for the fetch and serve tests: friendly and hostile local HTTP servers.

(No tests here; the module is named test_serve_* so it sits with the files it serves.)
Every server binds 127.0.0.1 on a free port and runs in a daemon thread.
"""

from __future__ import annotations

import io
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image


def photo_bytes(name: str = "chelsea", size: int = 96, fmt: str = "JPEG") -> bytes:
    """A real photo from scikit-image, shrunk (decoding stays cheap), encoded as ``fmt``."""
    from skimage import data

    image = Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid-looking PNG header declaring width x height pixels, with a tiny IDAT.

    A few hundred bytes on the wire; 2.7 GB if a decoder believed it. The pixel cap must refuse
    it from the header, before decoding.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    row = b"\x00" + b"\x00" * (3 * 16)
    pixels = zlib.compress(row * 16, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


class _Handler(BaseHTTPRequestHandler):
    """Routes: /image.jpg, /slow.jpg?s=SECONDS, /forever, /big (Content-Length over any cap),
    /trickle, /redirect?to=URL, /loop, /host (echoes the Host header), /missing (404)."""

    protocol_version = "HTTP/1.1"
    image = b""

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, body: bytes, content_type: str = "image/jpeg") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        with suppress(BrokenPipeError, ConnectionResetError):
            self._route(path, query)

    def _route(self, path: str, query: str) -> None:
        if path == "/image.jpg":
            self._send(self.image)
        elif path == "/slow.jpg":  # ?s=SECONDS (default 1.5) before answering
            time.sleep(float(query.removeprefix("s=") or 1.5))
            self._send(self.image)
        elif path == "/host":
            self._send(self.headers.get("Host", "").encode(), "text/plain")
        elif path == "/forever":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            block = b"\xff" * 65536
            deadline = time.monotonic() + 30  # bounded even if the client never stops reading
            while time.monotonic() < deadline:
                self.wfile.write(block)
        elif path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(b"\x00" * 1024)
        elif path == "/trickle":
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@contextmanager
def image_server(image: bytes | None = None, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A local HTTP(S) server; yields its base URL (http[s]://127.0.0.1:PORT)."""
    handler = type("Handler", (_Handler,), {"image": image if image is not None else photo_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scheme = "https" if tls is not None else "http"
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: the read timeout must fire."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
                accepted.append(connection)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=2)
        for connection in accepted:
            connection.close()
        listener.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


LABELS = ["tabby cat", "coffee mug", "astronaut", "rocket", "histology slide"]


def save_tiny_checkpoint(directory: object, image_size: int = 32, *, head: bool = True) -> None:
    """A 2-layer random ViT-Ti (5 labels, or no head: an embedder) saved as an HF directory by
    vitkit itself."""
    import torch

    from vitkit.checkpoints import save_pretrained
    from vitkit.images.processor import ImageProcessor
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    config = preset(
        "vit-tiny-patch16-224",
        num_hidden_layers=2,
        image_size=image_size,
        **({"id2label": dict(enumerate(LABELS))} if head else {"num_labels": 0}),
    )
    model = ViT(config).eval()
    if head:
        with torch.no_grad():  # random heads give near-uniform scores; spread them out
            model.head.weight.normal_(0, 1.0)
    processor = ImageProcessor.for_config(config).to_dict()
    save_pretrained(model, directory, processor)


def make_tls_files(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a throwaway CA and a certificate for ``host`` it signed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        import pytest

        pytest.skip("needs the openssl command to make test certificates")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-subj", "/CN=vitkit test CA", "-days", "2")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.csr",
        "-subj", f"/CN={host}")  # fmt: skip
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{host}\n")
    run("x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "cert.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
