"""The slide-level networks: bags of any size, the papers' equations, permutation invariance,
CLAM's instance loss, and the saved directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitkit.checkpoints.mil import MILModel, load_mil, save_mil
from vitkit.errors import CheckpointError
from vitkit.models.mil import MIL_MODELS, MULTI_LABEL, MILConfig, build_mil
from vitkit.training.tasks.mil_config import MIL_MODEL_CHOICES


def _network(model: str, classes: int = 3, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = MILConfig(
        model=model,
        input_dim=12,
        num_classes=classes,
        hidden_dim=16,
        attention_dim=8,
        heads=4,
        **extra,
    )  # type: ignore[arg-type]
    return build_mil(config).eval()


def test_the_cli_choices_are_the_networks() -> None:
    assert MIL_MODEL_CHOICES == MIL_MODELS


@pytest.mark.parametrize("model", MIL_MODELS)
@pytest.mark.parametrize("tiles", [1, 2, 7, 300])
def test_any_bag_size_gives_logits_and_attention_summing_to_one(model: str, tiles: int) -> None:
    network = _network(model)
    output = network(torch.randn(1, tiles, 12))  # a loader's (1, N, D), nothing padded
    assert output.logits.shape == (1, 3)
    assert output.attention.shape == (tiles,)
    assert torch.all(output.attention >= 0)
    assert output.attention.sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("model", ["mean", "max", "abmil", "clam_sb"])
def test_pooling_networks_ignore_tile_order(model: str) -> None:
    network = _network(model)
    bag = torch.randn(20, 12)
    order = torch.randperm(20)
    first, shuffled = network(bag), network(bag[order])
    torch.testing.assert_close(first.logits, shuffled.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.attention[order], shuffled.attention, rtol=1e-5, atol=1e-6)


def test_abmil_is_ilse_gated_attention() -> None:
    """Eq. 9 of Ilse et al. 2018, written out with the network's own weights."""
    network = _network("abmil")
    bag = torch.randn(9, 12)
    hidden = torch.relu(bag @ network.fc[0].weight.T + network.fc[0].bias)
    v, u = network.attention.tanh_branch[0], network.attention.gate_branch[0]
    w = network.attention.score
    gated = torch.tanh(hidden @ v.weight.T + v.bias) * torch.sigmoid(hidden @ u.weight.T + u.bias)
    weights = torch.softmax(gated @ w.weight[0] + w.bias, dim=0)
    expected = (weights @ hidden) @ network.classifier.weight.T + network.classifier.bias
    output = network(bag)
    torch.testing.assert_close(output.attention, weights)
    torch.testing.assert_close(output.logits[0], expected)


def test_mean_and_max_pool_the_projected_tiles() -> None:
    bag = torch.randn(6, 12)
    for model, pool in (("mean", lambda h: h.mean(0)), ("max", lambda h: h.max(0).values)):
        network = _network(model)
        hidden = torch.relu(network.fc[0](bag))
        expected = network.classifier(pool(hidden))
        torch.testing.assert_close(network(bag).logits[0], expected)


def test_clam_instance_loss_is_cross_entropy_on_the_top_and_bottom_tiles() -> None:
    network = _network("clam_sb", classes=2, clam_k=2)
    bag = torch.randn(10, 12)
    output = network(bag)
    order = torch.argsort(output.scores, descending=True)
    top, bottom = order[:2], order.flip(0)[:2]
    classifier = network.instance_classifiers[1]  # the bag's class
    logits = classifier(output.features[torch.cat([top, bottom])])
    expected = F.cross_entropy(logits, torch.tensor([1, 1, 0, 0]))
    # binary CLAM (no subtyping): only the bag's own class is supervised
    torch.testing.assert_close(network.instance_loss(output, torch.tensor([1])), expected)
    three = _network("clam_sb", classes=3, clam_k=2)
    out3 = three(bag)
    top3 = torch.argsort(out3.scores, descending=True)[:2]
    others = [
        F.cross_entropy(three.instance_classifiers[c](out3.features[top3]), torch.tensor([0, 0]))
        for c in (0, 2)
    ]
    order3 = torch.argsort(out3.scores, descending=True)
    pick = torch.cat([order3[:2], order3.flip(0)[:2]])
    own = F.cross_entropy(
        three.instance_classifiers[1](out3.features[pick]), torch.tensor([1, 1, 0, 0])
    )
    expected3 = (others[0] + own + others[1]) / 3
    torch.testing.assert_close(three.instance_loss(out3, torch.tensor([1])), expected3)


def test_clam_instance_loss_with_several_labels() -> None:
    network = _network("clam_sb", classes=3, clam_k=2, problem_type=MULTI_LABEL)
    output = network(torch.randn(10, 12))
    order = torch.argsort(output.scores, descending=True)
    top, both = order[:2], torch.cat([order[:2], order.flip(0)[:2]])
    terms = [
        F.cross_entropy(
            network.instance_classifiers[0](output.features[both]), torch.tensor([1, 1, 0, 0])
        ),
        F.cross_entropy(
            network.instance_classifiers[1](output.features[top]), torch.tensor([0, 0])
        ),
        F.cross_entropy(
            network.instance_classifiers[2](output.features[both]), torch.tensor([1, 1, 0, 0])
        ),
    ]
    loss = network.instance_loss(output, torch.tensor([[1.0, 0.0, 1.0]]))
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_transmil_scores_are_the_class_token_attention() -> None:
    network = _network("transmil")
    bag = torch.randn(5, 12)
    output = network(bag)
    assert output.attention.shape == (5,)
    # the class-token row computed as full attention would: softmax(q k^T / sqrt(d)), mean of heads
    hidden = network.fc(bag)
    side = 3
    squared = hidden.repeat(2, 1)[: side * side]
    tokens = torch.cat([network.cls_token[0], squared])[None]
    tokens = network.position(network.blocks[0](tokens), side)
    last = network.blocks[1]
    q, k, _ = last._qkv(last.norm(tokens))
    full = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1).mean(1)[0, 0]
    expected = full[1:6] / full[1:6].sum()
    torch.testing.assert_close(output.attention, expected)


@pytest.mark.parametrize("model", MIL_MODELS)
def test_saved_directory_reloads_the_same_network(model: str, tmp_path: Path) -> None:
    network = _network(model, problem_type=MULTI_LABEL)
    encoder = {"model": "/models/uni", "image_size": 224, "pool": None, "precision": "fp32"}
    tiling = {"mpp": 0.5, "tile_size": 224, "stride": None, "min_tissue": 0.5}
    save_mil(MILModel(network, ["a", "b", "c"], encoder, tiling), tmp_path / "best")
    loaded = load_mil(tmp_path / "best")
    bag = torch.randn(11, 12)
    torch.testing.assert_close(loaded.network(bag).logits, network(bag).logits)
    assert loaded.labels == ["a", "b", "c"] and loaded.multi_label
    assert loaded.encoder == encoder and loaded.tiling == tiling


def test_a_folder_that_is_not_a_mil_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a slide-level model"):
        load_mil(tmp_path)
