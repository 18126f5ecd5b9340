"""One model registry: every registered model type loads, saves, and works in every command.

Parity against transformers' own ``pipeline("image-classification")`` on directories that
transformers wrote (DeiT with teacher, ResNet), key problems reported in one error, commands a
type cannot serve answering one line, and library calls leaving process-wide settings alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import vitkit
from vitkit.checkpoints import MODEL_TYPES, load_model, save_model
from vitkit.cli import main
from vitkit.errors import CheckpointError
from vitkit.models.protocol import VisionModel

LABELS = ["cat", "coffee", "rocket", "person"]
ID2LABEL = dict(enumerate(LABELS))


@pytest.fixture(scope="module")
def hf_deit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random DeiTForImageClassificationWithTeacher with DeiT's processor (resize + crop,
    bicubic), saved by transformers."""
    torch.manual_seed(0)
    config = transformers.DeiTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
        id2label=ID2LABEL,
        label2id={label: i for i, label in ID2LABEL.items()},
    )
    model = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    with (
        torch.no_grad()
    ):  # random init gives near-uniform scores: spread them so ranks mean something
        model.cls_classifier.weight.normal_(0, 1.0)
        model.distillation_classifier.weight.normal_(0, 1.0)
    directory = tmp_path_factory.mktemp("hf-deit")
    model.save_pretrained(directory)
    processor = transformers.DeiTImageProcessor(
        size={"height": 72, "width": 72}, crop_size={"height": 64, "width": 64}
    )
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ResNet-18-shaped ResNetForImageClassification with microsoft/resnet-50's kind of
    processor (ConvNext: shortest edge / crop_pct, then center crop), saved by transformers."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(
        layer_type="basic",
        hidden_sizes=[64, 128, 256, 512],
        depths=[2, 2, 2, 2],
        id2label=ID2LABEL,
        label2id={label: i for i, label in ID2LABEL.items()},
    )
    model = transformers.ResNetForImageClassification(config).eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, tensor in model.named_buffers():  # fresh BatchNorms are identities
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
        model.classifier[1].weight.normal_(0, 0.02)
    directory = tmp_path_factory.mktemp("hf-resnet")
    model.save_pretrained(directory)
    processor = transformers.ConvNextImageProcessor(
        size={"shortest_edge": 64},
        crop_pct=0.875,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(directory)
    return directory


def _photos(photo_dir: Path) -> list[str]:
    return sorted(str(p) for p in photo_dir.glob("*.jpg"))


@pytest.mark.parametrize("kind", ["deit", "resnet"])
def test_predict_equals_transformers_pipeline(
    kind: str,
    hf_deit: Path,
    hf_resnet: Path,
    photo_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory = {"deit": hf_deit, "resnet": hf_resnet}[kind]
    paths = _photos(photo_dir)
    pipe = transformers.pipeline("image-classification", model=str(directory), device="cpu")
    expected = pipe(paths, top_k=3)
    capsys.readouterr()
    command = ["predict", "--model", str(directory), "--device", "cpu", "--format", "json"]
    assert main([*command, "--top-k", "3", *paths]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert len(ours) == len(expected) == 6
    spread = []
    for mine, theirs in zip(ours, expected, strict=True):
        assert [p["label"] for p in mine["predictions"]] == [p["label"] for p in theirs]
        scores = [p["score"] for p in mine["predictions"]]
        np.testing.assert_allclose(scores, [p["score"] for p in theirs], atol=1e-4)
        spread.append(scores[0] - scores[-1])
    assert max(spread) > 0.05  # the scores differ enough for the comparison to mean something


def test_every_type_loads_saves_and_meets_the_protocol(
    hf_deit: Path, hf_resnet: Path, photo_dir: Path, tmp_path: Path
) -> None:
    from vitkit.models.config import ViTConfig
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    vit_dir = save_model(
        ViT(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, image_size=32, id2label=ID2LABEL)),
        tmp_path / "vit",
    )  # fmt: skip
    pixels = vitkit.load(hf_deit).prepare(_photos(photo_dir)[:2])
    for directory, model_type in ((vit_dir, "vit"), (hf_deit, "deit"), (hf_resnet, "resnet")):
        loaded = load_model(directory)
        assert (loaded.model_type, loaded.format) == (model_type, "hf")
        model = loaded.model
        assert isinstance(model, VisionModel) and model.config.model_type == model_type
        assert model.config.labels() == LABELS
        assert model.num_parameters() > 0 and model.flops_per_image() > 0
        batch = torch.nn.functional.interpolate(pixels, size=model.config.image_hw)
        with torch.no_grad():
            logits = model.forward_logits(batch)
            embedding = model.forward_embedding(batch, model.capabilities.default_pool)
        assert logits.shape == (2, 4) and embedding.shape[0] == 2
        # saved in its own HF layout and read back: the same logits
        again = load_model(save_model(model, tmp_path / f"again-{model_type}")).model
        with torch.no_grad():
            torch.testing.assert_close(again.forward_logits(batch), logits)
        assert (
            json.loads((tmp_path / f"again-{model_type}" / "config.json").read_text())["model_type"]
            == model_type
        )
    assert set(MODEL_TYPES) >= {"vit", "deit", "resnet"}


def test_deit_and_resnet_key_problems_are_listed_in_one_error(
    hf_deit: Path, hf_resnet: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    for source, drop, extra, reshape in (
        (
            hf_deit,
            "deit.embeddings.distillation_token",
            "deit.mystery.weight",
            "distillation_classifier.weight",
        ),
        (
            hf_resnet,
            "resnet.embedder.embedder.convolution.weight",
            "resnet.mystery.weight",
            "classifier.1.weight",
        ),
    ):
        broken = tmp_path / source.name
        broken.mkdir()
        (broken / "config.json").write_text((source / "config.json").read_text())
        tensors = load_file(str(source / "model.safetensors"))
        assert drop in tensors and reshape in tensors
        del tensors[drop]
        tensors[extra] = torch.zeros(3)
        tensors[reshape] = torch.zeros(5, tensors[reshape].shape[1])
        save_file(tensors, str(broken / "model.safetensors"))
        with pytest.raises(CheckpointError) as caught:
            load_model(broken)
        message = str(caught.value)
        assert "model.safetensors: weights do not fit" in message
        assert extra in message and "unexpected keys (1)" in message
        assert f"wrong shapes (1):\n    {reshape}: checkpoint (5, " in message
        if source == hf_resnet:  # names map one to one: the missing name is checked by shape
            assert "missing keys (vitkit names) (1)" in message and "net.conv1.weight" in message
        else:
            assert "missing keys (1)" in message and drop in message


def test_commands_a_type_cannot_serve_say_so_in_one_line(
    hf_resnet: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = _photos(photo_dir)[0]
    cases = [
        (["explain", photo, "--model", str(hf_resnet), "--out", str(tmp_path / "maps")], "CNN"),
        (["export", str(hf_resnet), str(tmp_path / "r.onnx")], "exports transformers"),
        (["predict", photo, "--model", str(hf_resnet), "--precision", "int8"], "convolutions"),
        (
            ["embed", photo, "--model", str(hf_resnet), "--pool", "cls", "-o", str(tmp_path / "e.npy")],
            "no 'cls' embedding: use one of mean",
        ),
    ]  # fmt: skip
    for command, reason in cases:
        capsys.readouterr()
        assert main(command) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert err.startswith(f"vitkit {command[0]}: error: resnet models cannot") or (
            "resnet model has no" in err
        ), err
        assert reason in err, err
    assert not (tmp_path / "maps").exists() and not (tmp_path / "r.onnx").exists()


_SETTINGS_PROBE = """
import sys, torch
sys.path.insert(0, {src!r})
from vitkit.inference import runtime

def flags():
    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.get_num_threads(),
    )

def rss_drop_after_free_mb():
    # glibc, untuned: a 128 MB block is mmapped and given back on free (RSS drops);
    # tuned (vitkit's mallopt thresholds) it stays in the heap.
    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20
    block = torch.ones(32 * 2**20)
    before = rss()
    del block
    return before - rss()

before = flags()
import vitkit
classifier = vitkit.Classifier(vitkit.ViT(vitkit.ViTConfig(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    image_size=32, id2label={{0: "a", 1: "b"}})))
classifier.logits(torch.zeros(4, 3, 32, 32))
print(before == flags(), rss_drop_after_free_mb() > 64)
runtime.tune_process_for_inference("cpu")
print(rss_drop_after_free_mb() > 64)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator check")
def test_constructing_a_classifier_changes_nothing_process_wide() -> None:
    """Backend flags, threads and the allocator are as before; the explicit call tunes it (which
    shows the allocator check can fail)."""
    src = str(Path(vitkit.__file__).resolve().parents[1])
    probe = _SETTINGS_PROBE.format(src=src)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(probe)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "False"], result.stdout
