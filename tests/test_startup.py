"""Cheap guards for what users feel at start-up; the timings live in benchmarks/.

- `vitkit --help` and `vitkit CMD --help` must not import torch (it costs seconds and ~1 GB).
- `vitkit predict` / `embed` must not import torchvision: its import pulls in torch._dynamo
  (~2 s of CPU on a 2-core EPYC, as much again as `import torch`), and they need neither.
- The thread choice must not count vitkit's own busy threads (image decoders, core-split
  workers) as competition: on a machine where nothing else runs, a big enough forward gets
  every core.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from vitkit.cli import build_parser
from vitkit.inference import runtime

_PROBE = """
import json, sys
from vitkit.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "torchvision", "transformers", "timm", "fastapi", "ray")
               if m in sys.modules)
print(json.dumps(heavy), file=sys.stderr)
"""


def _commands() -> list[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(subparsers.choices)


def _heavy_modules_after(argv: list[str]) -> list[str]:
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(completed.stderr.strip().splitlines()[-1])


def test_help_imports_no_heavy_library() -> None:
    assert _heavy_modules_after(["--help"]) == []


@pytest.mark.parametrize("command", _commands())
def test_command_help_imports_no_heavy_library(command: str) -> None:
    assert _heavy_modules_after([command, "--help"]) == [], command


_COMMANDS_PROBE = """
import json, sys
from vitkit.cli import main
for argv in {runs!r}:
    assert main(argv) == 0, argv
heavy = ("torch", "torch._dynamo", "torchvision", "sympy", "transformers", "timm")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def test_predict_and_embed_run_without_torchvision_or_dynamo(
    tiny_hf_classifier: Path, photo_dir: Path, tmp_path: Path
) -> None:
    model, image = ["--model", str(tiny_hf_classifier)], str(photo_dir / "coffee.jpg")
    runs = [
        ["predict", *model, "--format", "json", image],
        ["embed", *model, "--out", str(tmp_path / "x.npy"), image],
    ]
    completed = subprocess.run(
        [sys.executable, "-c", _COMMANDS_PROBE.format(runs=runs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads(completed.stderr.strip().splitlines()[-1]) == ["torch"]


def _busy_worker(stop: threading.Event) -> None:
    # What an image decoder does: native work that releases the GIL, so the thread stays runnable.
    torch.set_num_threads(1)
    block = torch.randn(256, 256)
    while not stop.is_set():
        block.sort()


def _quiet_samples(count: int = 50) -> list[int]:
    return [runtime.other_running_tasks() for _ in range(count)]


@pytest.mark.skipif(runtime.usable_cores() < 2, reason="needs two cores")
def test_own_decode_threads_do_not_steal_the_forward_cores() -> None:
    cores = runtime.usable_cores()
    batch, flops = 8, 35e9  # ViT-B/16 at batch 8: work enough for every core
    expected = runtime.choose_threads(batch, flops, cores=cores)
    assert expected == cores  # the premise: by work alone, all cores
    stop = threading.Event()
    workers = [threading.Thread(target=_busy_worker, args=(stop,)) for _ in range(cores)]
    quiet_before = min(_quiet_samples())
    for worker in workers:
        worker.start()
    try:
        own = max(runtime.own_running_threads() for _ in range(50))
        seen = [runtime.choose_threads(batch, flops, cores=cores, busy=n) for n in _quiet_samples()]
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert own >= 2, "the busy workers must be seen as this process's own running threads"
    if quiet_before > 0:
        pytest.skip(f"other processes keep {quiet_before} task(s) running: not a quiet machine")
    # One quiet sample is enough to show our own runnable workers are not counted (before the
    # fix, with them counted, never).
    assert max(seen) == expected, seen


def test_a_process_that_really_competes_is_seen() -> None:
    """The looks that drop passing blips still see a process that keeps a core busy, and the
    forward then leaves that core to it."""
    heavy = types.SimpleNamespace(flops_per_image=lambda hw: 35e9)  # ViT-B/16: work for 2+
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        meter = runtime.CompetitionMeter()
        meter.busy_cores()
        time.sleep(0.3)
        # the looks see it (not every look: this process's own threads flicker between the two
        # reads of a look, which is why the meter decides whenever it has a window) ...
        assert max(runtime.other_running_tasks() for _ in range(10)) >= 1
        # ... and the meter, over its window, leaves its core to it
        assert runtime.auto_threads(8, heavy, meter=meter) <= max(1, runtime.usable_cores() - 1)
    finally:
        competitor.kill()
        competitor.wait()


def test_the_meter_sees_a_competitor_over_its_window_and_not_its_own_work() -> None:
    meter = runtime.CompetitionMeter()
    assert meter.busy_cores() is None  # no window yet: the caller looks at the run queue
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.6)
        seen = meter.busy_cores()
    finally:
        competitor.kill()
        competitor.wait()
    assert seen is not None and seen >= 1  # a whole core, all window long
    time.sleep(0.05)
    assert meter.busy_cores() is None  # too short a window to say anything
    quiet_before = min(_quiet_samples(10))
    spin_until = time.monotonic() + 0.6
    while time.monotonic() < spin_until:  # this process's own work is not competition
        pass
    own = meter.busy_cores()
    if quiet_before > 0 or min(_quiet_samples(10)) > 0:
        pytest.skip("other processes are running: not a quiet machine")
    assert own == 0


@pytest.mark.parametrize("command", ["predict", "embed", "serve", "slide"])
def test_every_model_command_takes_threads(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    rest = ["--out", "o"] if command in ("embed", "slide") else []
    inputs = [] if command == "serve" else ["x.svs" if command == "slide" else "x.jpg"]
    args = parser.parse_args([command, *inputs, *rest, "--threads", "3"])
    assert args.threads == 3
    assert parser.parse_args([command, *inputs, *rest]).threads == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args([command, *inputs, *rest, "--threads", "0"])
    assert "expected 'auto' or a whole number" in capsys.readouterr().err


def test_threads_reach_the_forward(tiny_hf_classifier: Path) -> None:
    from vitkit.cli._loading import load_classifier
    from vitkit.cli._options import config_from_args
    from vitkit.inference.settings import LoadSettings

    args = build_parser().parse_args(
        [
            "predict",
            "x.jpg",
            "--model",
            str(tiny_hf_classifier),
            "--device",
            "cpu",
            "--threads",
            "1",
        ]
    )
    classifier = load_classifier(config_from_args(LoadSettings, args))
    assert classifier._forward.thread_count(64) == 1  # a big batch, yet the user's one thread
