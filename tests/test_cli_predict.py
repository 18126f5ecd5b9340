"""`vitkit predict` / `vitkit embed` on real photos and on every kind of bad input."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.cli import main


@pytest.fixture(scope="module")
def mixed_inputs(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good photos in odd modes, and broken files, side by side in one folder."""
    folder = tmp_path_factory.mktemp("mixed")
    astronaut = Image.open(photo_dir / "astronaut.jpg")
    good = {
        "photo.jpg": folder / "photo.jpg",
        "one_pixel.png": folder / "one_pixel.png",
        "rgba.png": folder / "rgba.png",
        "sixteen_bit.png": folder / "sixteen_bit.png",
        "cmyk.jpg": folder / "cmyk.jpg",
    }
    shutil.copy(photo_dir / "coffee.jpg", good["photo.jpg"])
    Image.new("RGB", (1, 1), (200, 10, 10)).save(good["one_pixel.png"])
    astronaut.convert("RGBA").save(good["rgba.png"])
    gray16 = (np.asarray(astronaut.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(good["sixteen_bit.png"])
    assert Image.open(good["sixteen_bit.png"]).mode.startswith("I")
    astronaut.convert("CMYK").save(good["cmyk.jpg"])
    bad = {
        "empty.jpg": folder / "empty.jpg",
        "truncated.jpg": folder / "truncated.jpg",
        "text.jpg": folder / "text.jpg",
        "missing.jpg": folder / "does-not-exist.jpg",
    }
    bad["empty.jpg"].write_bytes(b"")
    buffer = io.BytesIO()
    astronaut.save(buffer, format="JPEG")
    bad["truncated.jpg"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    bad["text.jpg"].write_text("this is not an image\n")
    return {**good, **{f"bad:{k}": v for k, v in bad.items()}}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_json_on_mixed_inputs(
    tiny_hf_classifier: Path, mixed_inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(p) for p in mixed_inputs.values()]
    code, out, err = run_cli(
        capsys,
        "predict",
        "--model",
        str(tiny_hf_classifier),
        "--top-k",
        "3",
        "--format",
        "json",
        *paths,
    )
    assert code == 1  # some inputs failed
    records = json.loads(out)
    assert [r["input"] for r in records] == paths
    by_name = {Path(r["input"]).name: r for r in records}
    for name in ["photo.jpg", "one_pixel.png", "rgba.png", "sixteen_bit.png", "cmyk.jpg"]:
        predictions = by_name[name]["predictions"]
        assert len(predictions) == 3
        assert set(predictions[0]) == {"label", "score"}
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    for name in ["empty.jpg", "truncated.jpg", "text.jpg", "does-not-exist.jpg"]:
        error = by_name[name]["error"]
        assert name in error, error  # the message names the file
        assert "predictions" not in by_name[name]
    assert "truncated.jpg" in err


def test_predict_folder_formats(
    tiny_hf_classifier: Path, photo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        capsys, "predict", "-m", str(tiny_hf_classifier), "-k", "2", "-f", "jsonl", str(photo_dir)
    )
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 6 and all(len(line["predictions"]) == 2 for line in lines)
    code, out, _ = run_cli(
        capsys, "predict", "-m", str(tiny_hf_classifier), "-k", "2", "-f", "csv", str(photo_dir)
    )
    rows = out.strip().splitlines()
    assert code == 0 and rows[0] == "input,rank,label,score,error" and len(rows) == 1 + 12
    code, out, _ = run_cli(capsys, "predict", "-m", str(tiny_hf_classifier), str(photo_dir))
    assert code == 0 and "chelsea.jpg" in out


def test_predict_on_headless_model_says_use_embed(
    tiny_hf_feature_extractor: Path, photo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "predict", "-m", str(tiny_hf_feature_extractor), str(photo_dir / "coffee.jpg")
    )
    assert code == 1
    assert "no classification head" in err and "vitkit embed" in err


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_embed_writes_each_format(
    suffix: str,
    tiny_hf_feature_extractor: Path,
    mixed_inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_file = tmp_path / f"emb{suffix}"
    inputs = [
        str(mixed_inputs["photo.jpg"]),
        str(mixed_inputs["rgba.png"]),
        str(mixed_inputs["bad:text.jpg"]),
    ]
    code, _, err = run_cli(
        capsys,
        "embed",
        "-m",
        str(tiny_hf_feature_extractor),
        "--pool",
        "pooler",
        "--out",
        str(out_file),
        *inputs,
    )
    assert code == 1 and "text.jpg" in err
    if suffix == ".npy":
        assert np.load(out_file).shape == (2, 64)
    elif suffix == ".npz":
        data = np.load(out_file)
        assert data["embeddings"].shape == (2, 64)
        assert [Path(p).name for p in data["inputs"]] == ["photo.jpg", "rgba.png"]
        assert [Path(p).name for p in data["failed_inputs"]] == ["text.jpg"]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out_file)
        assert table.num_rows == 2 and len(table.column("embedding")[0]) == 64


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--top-k" in out and "VITKIT_MODEL" in out


class _PhotoServer(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_predict_fetches_a_loopback_url_only_when_allowed(
    tiny_hf_classifier: Path,
    photo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One process, as on Ray: a URL on 127.0.0.1 is refused by the SSRF guard unless
    --allow-private-urls (or --allow-host 127.0.0.1) says the private address is wanted; with
    it, the URL gets the answer of the same photo read from disk. --out writes the records."""
    photo = photo_dir / "coffee.jpg"
    _PhotoServer.body = photo.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PhotoServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/coffee.jpg"
    model = ["--model", str(tiny_hf_classifier), "--format", "json"]
    try:
        code, out, err = run_cli(capsys, "predict", url, *model)
        assert (
            code == 1
            and "loopback" in json.loads(out)[0]["error"]
            and "--allow-private-urls" in err
        )
        for allow in (["--allow-private-urls"], ["--allow-host", "127.0.0.1"]):
            out_file = tmp_path / f"{allow[0][2:]}.json"
            code, _, _ = run_cli(capsys, "predict", url, *model, *allow, "--out", str(out_file))
            assert code == 0
            fetched = json.loads(out_file.read_text())[0]["predictions"]
            _, local, _ = run_cli(capsys, "predict", str(photo), *model)
            assert fetched == json.loads(local)[0]["predictions"]
    finally:
        server.shutdown()
