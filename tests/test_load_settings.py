"""``vitkit.load`` takes ``LoadSettings`` whole, and its answers do not depend on machine load."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vitkit
from conftest import real_photos
from vitkit.checkpoints import save_model
from vitkit.inference import runtime
from vitkit.inference.settings import DEFAULT_THREADS, LoadSettings
from vitkit.models.config import preset
from vitkit.models.vit import ViT


def test_load_takes_the_settings_whole_and_keywords_win(tiny_hf_classifier: Path) -> None:
    settings = LoadSettings(model=str(tiny_hf_classifier), tta="flip", threads=3, image_size=32)
    whole = vitkit.load(settings=settings)
    assert (whole.tta, whole._forward.threads, whole.processor.size) == ("flip", 3, (32, 32))
    by_keywords = vitkit.load(tiny_hf_classifier, tta="flip", threads=3, image_size=32)
    photos = list(real_photos().values())
    assert whole.predict(photos) == by_keywords.predict(photos)
    mixed = vitkit.load(settings=settings, tta="none")  # a keyword given wins over the settings
    assert (mixed.tta, mixed._forward.threads) == ("none", 3)
    plain = vitkit.load(tiny_hf_classifier)  # nothing given: the fields' own defaults
    assert (plain.tta, plain.precision, plain._forward.threads) == ("none", "fp32", DEFAULT_THREADS)


def test_load_settings_refuse_impossible_values_in_one_line() -> None:
    for bad in ({"precision": "fp64"}, {"tta": "spin"}, {"threads": 0}):
        with pytest.raises(vitkit.errors.VitkitError) as refused:
            LoadSettings(**bad)  # type: ignore[arg-type]
        assert str(next(iter(bad))) in str(refused.value) and "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def vit_tiny_224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ViT-Ti/16 at 224 (random weights): 8 images are work enough for "auto" to use 2 cores."""
    torch.manual_seed(0)
    model = ViT(preset("vit-tiny-patch16-224", num_labels=10)).eval()
    return save_model(model, tmp_path_factory.mktemp("vit-tiny-224"))


def test_int8_answers_do_not_depend_on_machine_load(vit_tiny_224: Path) -> None:
    """The same int8 model, the same 8 photos: bit-identical logits with the machine as it is
    and with a busy-looping process on every core. "auto" threads would not give that: it runs
    the batch as 2 sub-batches on a free machine and whole on a busy one, and dynamic int8
    quantises each sub-batch on its own range (the halves differ from the whole, below), so the
    library's default is a fixed count."""
    classifier = vitkit.load(vit_tiny_224, device="cpu", precision="int8")
    assert classifier._forward.threads == DEFAULT_THREADS
    photos = list(real_photos().values())
    pixels = classifier.prepare([photos[i % len(photos)] for i in range(8)])
    cores = runtime.usable_cores()
    flops = classifier.model.flops_per_image()
    idle_choice = runtime.choose_threads(8, flops, cores=cores, busy=0)
    busy_choice = runtime.choose_threads(8, flops, cores=cores, busy=cores)
    # what "auto" would decide: split on a free machine, whole on a busy one
    assert runtime.worth_splitting(8, idle_choice) and not runtime.worth_splitting(8, busy_choice)

    quiet = classifier.logits(pixels)
    halves = torch.cat([classifier.logits(half) for half in pixels.tensor_split(2)])
    assert not torch.equal(quiet, halves)  # what a split decided by the machine's load changes
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.3)  # the loops are running
        busy = classifier.logits(pixels)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    assert torch.equal(quiet, busy)
