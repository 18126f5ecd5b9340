"""Hugging Face directories: vitkit equals transformers on the same weights, in both directions.

Every checkpoint is random-initialised by transformers inside the test and saved with its own
``save_pretrained``; inputs are real photos. Tolerance: fp32 max abs diff <= 1e-4.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

from vitkit.checkpoints import (
    CheckpointError,
    detect_format,
    imagenet_labels,
    load_model,
    save_pretrained,
)
from vitkit.models.config import ViTConfig
from vitkit.models.vit import ViT

TOLERANCE = 1e-4


def photos(height: int, width: int, count: int = 2) -> torch.Tensor:
    """Real photos (scikit-image), resized and normalised to [-1, 1] like ViTImageProcessor."""
    from skimage import data

    images = [data.astronaut(), data.coffee(), data.chelsea()][:count]
    batch = torch.cat(
        [
            F.interpolate(
                torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                size=(height, width),
                mode="bilinear",
                antialias=True,
            )
            for image in images
        ]
    )
    return (batch - 0.5) / 0.5


def small_hf_config(**changes: Any) -> Any:
    settings: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
        num_labels=5,
    )
    settings.update(changes)
    return transformers.ViTConfig(**settings)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (HF zero-inits biases and sets LayerNorms to 1/0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * (0.05 if parameter.dim() > 1 else 0.2))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def hf_classifier_dir(tmp_path: Path, config: Any, seed: int = 0) -> tuple[Any, Path]:
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config).eval()
    randomise(model, seed)
    directory = tmp_path / "hf"
    model.save_pretrained(directory)
    return model, directory


def check_classifier_both_ways(
    reference: Any, directory: Path, tmp_path: Path, count: int = 2
) -> None:
    """vitkit loads ``directory`` = reference; vitkit saves it again; transformers reloads = reference."""
    height, width = reference.config.image_size, reference.config.image_size
    if isinstance(reference.config.image_size, list | tuple):
        height, width = reference.config.image_size
    pixels = photos(height, width, count)
    loaded = load_model(directory)
    assert loaded.format == "hf"
    with torch.no_grad():
        expected_tokens = reference.vit(pixels).last_hidden_state
        expected = reference.classifier(expected_tokens[:, 0])  # ViTForImageClassification's head
        ours = loaded.model(pixels)
    assert max_diff(ours.logits, expected) <= TOLERANCE
    assert max_diff(ours.last_hidden_state, expected_tokens) <= TOLERANCE
    assert loaded.model.config.id2label == {int(k): v for k, v in reference.config.id2label.items()}
    assert loaded.model.config.layer_norm_eps == reference.config.layer_norm_eps

    saved = save_pretrained(loaded.model, tmp_path / "vitkit-saved")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = transformers.ViTForImageClassification.from_pretrained(saved).eval()
    with torch.no_grad():
        assert max_diff(reloaded(pixels).logits, expected) <= TOLERANCE
    assert reloaded.config.id2label == reference.config.id2label


def test_full_size_vit_b16_224_both_directions(tmp_path: Path) -> None:
    labels = imagenet_labels()
    config = transformers.ViTConfig(  # the defaults are ViT-B/16 at 224
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )
    reference, directory = hf_classifier_dir(tmp_path, config)
    check_classifier_both_ways(reference, directory, tmp_path, count=1)  # one photo: CPU budget
    saved = tmp_path / "vitkit-saved"
    names = set(load_file(saved / "model.safetensors"))
    assert names == set(load_file(directory / "model.safetensors"))
    processor = transformers.ViTImageProcessor.from_pretrained(saved)
    assert processor.size == {"height": 224, "width": 224}
    assert list(processor.image_mean) == [0.5, 0.5, 0.5]


SMALL_CASES = {
    "patch32": dict(patch_size=32, image_size=96),
    "image384": dict(image_size=384),
    "non_square": dict(image_size=[48, 80]),
    "no_qkv_bias": dict(qkv_bias=False),
    # Large enough to move the outputs well past the tolerance if vitkit used the wrong eps.
    "layer_norm_eps_0.05": dict(layer_norm_eps=0.05),
    "named_labels": dict(
        num_labels=3,
        id2label={0: "astronaut", 1: "coffee", 2: "cat"},
        label2id={"astronaut": 0, "coffee": 1, "cat": 2},
    ),
}


@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_small_configs_both_directions(case: str, tmp_path: Path) -> None:
    reference, directory = hf_classifier_dir(tmp_path, small_hf_config(**SMALL_CASES[case]))
    check_classifier_both_ways(reference, directory, tmp_path)


def test_bare_vit_model_with_pooler_like_in21k(tmp_path: Path) -> None:
    """google/vit-large-patch16-224-in21k is a ViTModel: pooler, no head, no vit. prefix."""
    torch.manual_seed(3)
    reference = transformers.ViTModel(small_hf_config(), add_pooling_layer=True).eval()
    randomise(reference, 3)
    reference.save_pretrained(tmp_path / "in21k")
    pixels = photos(64, 64)
    loaded = load_model(tmp_path / "in21k")
    assert loaded.model.config.num_labels == 0 and loaded.model.config.add_pooling_layer
    with torch.no_grad():
        expected = reference(pixels)
        ours = loaded.model(pixels)
    assert ours.logits is None
    assert max_diff(ours.last_hidden_state, expected.last_hidden_state) <= TOLERANCE
    assert ours.pooler_output is not None
    assert max_diff(ours.pooler_output, expected.pooler_output) <= TOLERANCE

    saved = save_pretrained(loaded.model, tmp_path / "saved")
    names = set(load_file(saved / "model.safetensors"))
    assert names == set(load_file(tmp_path / "in21k" / "model.safetensors"))
    assert "pooler.dense.weight" in names and not any(n.startswith("vit.") for n in names)
    reloaded = transformers.ViTModel.from_pretrained(saved).eval()
    with torch.no_grad():
        again = reloaded(pixels)
    assert max_diff(again.pooler_output, expected.pooler_output) <= TOLERANCE
    assert max_diff(again.last_hidden_state, expected.last_hidden_state) <= TOLERANCE


def test_pytorch_model_bin_and_sharded_layouts(tmp_path: Path) -> None:
    reference, directory = hf_classifier_dir(tmp_path, small_hf_config())
    tensors = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(tensors, directory / "pytorch_model.bin")
    pixels = photos(64, 64)
    with torch.no_grad():
        expected = reference(pixels).logits
        assert max_diff(load_model(directory).model(pixels).logits, expected) <= TOLERANCE
        # The weights file itself, next to its config.json, means the same directory.
        by_file = load_model(directory / "pytorch_model.bin")
        assert by_file.format == "hf"
        assert max_diff(by_file.model(pixels).logits, expected) <= TOLERANCE

    # Sharded: two safetensors files and an index, as transformers writes for big models.
    (directory / "pytorch_model.bin").unlink()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(directory / shard))
        weight_map.update(dict.fromkeys(shard_names, shard))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with torch.no_grad():
        assert max_diff(load_model(directory).model(pixels).logits, expected) <= TOLERANCE


def test_resampled_at_load_then_saved_loads_in_transformers(tmp_path: Path) -> None:
    _, directory = hf_classifier_dir(tmp_path, small_hf_config())
    loaded = load_model(directory, image_size=96)
    assert loaded.model.config.image_size == 96
    assert loaded.model.pos_embed.shape[1] == 1 + 6 * 6
    saved = save_pretrained(loaded.model, tmp_path / "at96")
    reloaded = transformers.ViTForImageClassification.from_pretrained(saved).eval()
    pixels = photos(96, 96)
    with torch.no_grad():
        assert max_diff(reloaded(pixels).logits, loaded.model(pixels).logits) <= TOLERANCE
    assert transformers.ViTImageProcessor.from_pretrained(saved).size == {"height": 96, "width": 96}


# ---- mismatches and bad inputs -----------------------------------------------------------------
def test_wrong_class_count_is_listed_with_the_file(tmp_path: Path) -> None:
    _, directory = hf_classifier_dir(tmp_path, small_hf_config(num_labels=5))
    config = json.loads((directory / "config.json").read_text())
    config["id2label"] = {str(i): f"class {i}" for i in range(10)}
    config["label2id"] = {f"class {i}": i for i in range(10)}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        load_model(directory)
    message = str(error.value)
    assert str(directory / "model.safetensors") in message
    assert "classifier.weight: checkpoint (5, 64), model (10, 64)" in message
    assert "classifier.bias: checkpoint (5,), model (10,)" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    _, directory = hf_classifier_dir(tmp_path, small_hf_config())
    tensors = load_file(directory / "model.safetensors")
    del tensors["vit.encoder.layer.1.attention.attention.key.weight"]
    del tensors["vit.layernorm.bias"]
    tensors["vit.encoder.layer.1.mystery.weight"] = torch.zeros(3)
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_model(directory)
    message = str(error.value)
    assert "missing keys (2)" in message and "unexpected keys (1)" in message
    assert "vit.encoder.layer.1.attention.attention.key.weight" in message
    assert "vit.layernorm.bias" in message and "vit.encoder.layer.1.mystery.weight" in message


def test_not_a_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "broken"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(small_hf_config().to_dict()))
    (directory / "model.safetensors").write_text("this is not a safetensors file")
    with pytest.raises(CheckpointError, match=r"broken/model\.safetensors: not a readable"):
        load_model(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no PyTorch weights found"):
        load_model(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(
        CheckpointError,
        match=r"model_type 'bert' .* is not a model vitkit reads.*vit .*deit .*resnet",
    ):
        load_model(directory)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a checkpoint format"):
        load_model(notes)
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_model(tmp_path / "does" / "not" / "exist")


# ---- saving --------------------------------------------------------------------------------
def tiny_vit(**changes: Any) -> ViT:
    settings: dict[str, Any] = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    settings.update(changes)
    return ViT(ViTConfig(image_size=32, patch_size=16, **settings)).eval()


def test_save_replaces_a_checkpoint_atomically_and_refuses_other_directories(
    tmp_path: Path,
) -> None:
    target = tmp_path / "model"
    save_pretrained(tiny_vit(num_labels=2), target)
    save_pretrained(tiny_vit(num_labels=7), target)
    assert load_model(target).model.config.num_labels == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left behind
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(CheckpointError, match="refusing to replace it"):
        save_pretrained(tiny_vit(), precious)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_save_failure_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model"
    save_pretrained(tiny_vit(num_labels=2), target)
    from vitkit.checkpoints import directories  # the weights writer every directory saver shares

    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(directories, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tiny_vit(num_labels=9), target)
    monkeypatch.undo()
    assert load_model(target).model.config.num_labels == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_pooler_head_saves_with_a_warning_and_reloads_exactly(tmp_path: Path) -> None:
    model = tiny_vit(num_labels=4, add_pooling_layer=True, classifier_uses_pooler=True)
    with pytest.warns(UserWarning, match="transformers will ignore vit.pooler"):
        saved = save_pretrained(model, tmp_path / "pre-logits")
    pixels = photos(32, 32)
    reloaded = load_model(saved).model
    assert reloaded.config.classifier_uses_pooler
    with torch.no_grad():
        assert max_diff(reloaded(pixels).logits, model(pixels).logits) == 0.0


def test_custom_processor_config_is_written(tmp_path: Path) -> None:
    processor = transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, resample=3, image_mean=[0.4, 0.5, 0.6]
    ).to_dict()
    saved = save_pretrained(tiny_vit(num_labels=2), tmp_path / "m", processor_config=processor)
    assert load_model(saved).processor_config == json.loads(json.dumps(processor))
    reread = transformers.ViTImageProcessor.from_pretrained(saved)
    assert reread.resample == 3 and list(reread.image_mean) == [0.4, 0.5, 0.6]


# ---- hub ids -------------------------------------------------------------------------------
def test_hub_id_offline_not_cached_says_how_to_use_a_local_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert detect_format("google/vit-base-patch16-224") == "hub"
    with pytest.raises(CheckpointError) as error:
        load_model("google/vit-base-patch16-224")
    message = str(error.value)
    assert "google/vit-base-patch16-224" in message and "HF_HUB_OFFLINE" in message
    assert "--local-dir" in message and "config.json" in message


def test_hub_id_found_in_local_cache_loads_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, directory = hf_classifier_dir(tmp_path, small_hf_config())
    # The cache layout huggingface_hub writes: models--owner--name/{refs/main, snapshots/<sha>/}.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--tiny-vit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    directory.rename(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    loaded = load_model("someone/tiny-vit")
    assert loaded.format == "hub" and loaded.source == "someone/tiny-vit"
    pixels = photos(64, 64)
    with torch.no_grad():
        assert max_diff(loaded.model(pixels).logits, reference(pixels).logits) <= TOLERANCE


def test_imagenet_labels_match_hf_id2label_style() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    # Spot checks against google/vit-base-patch16-224's config.json id2label.
    assert labels[0] == "tench, Tinca tinca"
    assert labels[1] == "goldfish, Carassius auratus"
    assert labels[285] == "Egyptian cat"
    assert labels[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_hub_download_prefers_safetensors_and_falls_back_to_pytorch_bin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download logic, with huggingface_hub's snapshot_download replaced by a local fake
    (tests never reach the Hub): a repo with only pytorch_model.bin gets a second, wider call."""
    from vitkit.checkpoints import hub

    reference, directory = hf_classifier_dir(tmp_path, small_hf_config())
    tensors = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(tensors, directory / "pytorch_model.bin")
    calls: list[list[str]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        assert repo_id == "someone/old-vit" and kwargs["revision"] == "v1"
        calls.append(kwargs["allow_patterns"])
        snapshot = tmp_path / "snapshot"
        snapshot.mkdir(exist_ok=True)
        for source in directory.iterdir():
            if any(Path(source.name).match(pattern) for pattern in kwargs["allow_patterns"]):
                (snapshot / source.name).write_bytes(source.read_bytes())
        return str(snapshot)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    loaded = load_model("someone/old-vit@v1")
    assert len(calls) == 2
    assert "model.safetensors" in calls[0] and "pytorch_model.bin" not in calls[0]
    assert "pytorch_model.bin" in calls[1]
    pixels = photos(64, 64)
    with torch.no_grad():
        assert max_diff(loaded.model(pixels).logits, reference(pixels).logits) <= TOLERANCE
