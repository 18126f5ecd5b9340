"""Slide-level networks over bags of tile embeddings (multiple-instance learning).

A bag is one slide's tile embeddings, ``(N, D)`` for any N: nothing is padded to a fixed count,
so every network here sees exactly the tiles the slide has. Each returns ``MILOutput``: the
bag's logits ``(1, classes)`` and one attention score per tile ``(N,)`` that sums to 1 (what the
heat maps and galleries show). Five networks, one ``MILConfig``:

- ``mean`` / ``max``: the embedding-level baselines of Ilse et al. 2018: tiles projected by a
  shared layer, then averaged (attention: uniform) or max-pooled per channel (attention: the
  share of channels a tile wins);
- ``abmil``: gated attention MIL (Ilse, Tomczak & Welling, ICML 2018, eq. 9):
  ``a_n = w^T (tanh(V h_n) * sigmoid(U h_n))``, softmax over the tiles, the bag is the
  attention-weighted mean of the ``h_n``;
- ``clam_sb``: CLAM single-branch (Lu et al. 2021, mahmoodlab/CLAM ``CLAM_SB``): the same gated
  attention plus one instance classifier per class, trained on the k most and least attended
  tiles (``instance_loss``: the clustering constraint);
- ``transmil``: TransMIL (Shao et al. 2021): a class token and two transformer layers with the
  PPEG position encoder (depth-wise 7/5/3 convolutions over the tiles laid on a square, padded
  by repeating the first tiles, as the authors do). Attention is exact
  (``F.scaled_dot_product_attention``, memory-efficient kernels) where the paper approximates
  it with Nystrom attention; the tile scores are the class token's attention in the last
  layer, averaged over heads.

Written from the papers and the authors' code (AMLab-Amsterdam/AttentionDeepMIL,
mahmoodlab/CLAM, szc19990412/TransMIL); the layer sizes are the config's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MIL_MODELS = ("mean", "max", "abmil", "clam_sb", "transmil")
SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"


@dataclass
class MILConfig:
    """What a slide-level network is; saved as the ``config.json`` of a MIL model directory."""

    model: str
    input_dim: int
    num_classes: int
    problem_type: str = SINGLE_LABEL
    hidden_dim: int = 256  # the tiles' projection (Ilse: 500, CLAM small: 512)
    attention_dim: int = 128  # the attention branch (Ilse: 128, CLAM small: 256)
    dropout: float = 0.25
    clam_k: int = 8  # CLAM: most / least attended tiles per bag for the instance loss
    heads: int = 8  # TransMIL
    layers: int = 2  # TransMIL

    def check(self) -> None:
        if self.model not in MIL_MODELS:
            raise ValueError(f"unknown MIL model {self.model!r}: choose one of {MIL_MODELS}")
        if self.problem_type not in (SINGLE_LABEL, MULTI_LABEL):
            raise ValueError(f"unknown problem_type {self.problem_type!r}")
        if self.model == "transmil" and self.hidden_dim % self.heads:
            raise ValueError(
                f"TransMIL: hidden_dim {self.hidden_dim} must be a multiple of heads {self.heads}"
            )
        if min(self.input_dim, self.num_classes, self.hidden_dim, self.attention_dim) < 1:
            raise ValueError("input_dim, num_classes, hidden_dim and attention_dim must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MILConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class MILOutput:
    logits: torch.Tensor  # (1, classes)
    attention: torch.Tensor  # (N,), sums to 1 over the bag's tiles
    scores: torch.Tensor | None = None  # (N,) attention before the softmax (CLAM's top-k)
    features: torch.Tensor | None = None  # (N, hidden) projected tiles (CLAM's instance loss)


def as_bag(features: torch.Tensor) -> torch.Tensor:
    """(N, D) from (N, D) or a loader's (1, N, D); a bag needs at least one tile."""
    if features.dim() == 3 and features.shape[0] == 1:
        features = features[0]
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(
            f"a bag is (tiles, dim) with at least one tile, got {tuple(features.shape)}"
        )
    return features


class MILNetwork(nn.Module):
    """Base: the tile projection ``fc`` and the bag classifier shared by every network."""

    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, config: MILConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.fc = nn.Sequential(
            nn.Linear(config.input_dim, config.hidden_dim), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.classifier = nn.Linear(config.hidden_dim, config.num_classes)
        # Each embedding feature standardised with the training tiles' statistics (set by the
        # task before training, saved with the weights): foundation-model features share a large
        # common part, which otherwise dominates Adam's step sizes and slows learning.
        self.register_buffer("feature_mean", torch.zeros(config.input_dim))
        self.register_buffer("feature_std", torch.ones(config.input_dim))

    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        # a feature constant over the training tiles (a blank pixel, a dead channel) is only
        # centred: dividing by its ~0 spread would blow up any other value it takes later
        self.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def pool(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(bag vector (hidden,), attention (N,), raw scores or None)."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> MILOutput:
        bag_features = (as_bag(features) - self.feature_mean) / self.feature_std
        hidden = self.fc(bag_features)
        bag, attention, scores = self.pool(hidden)
        return MILOutput(self.classifier(bag)[None], attention, scores, hidden)


class MeanPool(MILNetwork):
    def pool(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        count = hidden.shape[0]
        return hidden.mean(0), hidden.new_full((count,), 1.0 / count), None


class MaxPool(MILNetwork):
    def pool(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        bag, winners = hidden.max(0)
        # A tile's share of the channels it wins: what the max passes on from it.
        wins = torch.bincount(winners, minlength=hidden.shape[0]).to(hidden.dtype)
        return bag, wins / wins.sum(), None


class GatedAttention(nn.Module):
    """``w^T (tanh(V h) * sigmoid(U h))`` per tile: Ilse et al. 2018's gated attention."""

    def __init__(self, hidden_dim: int, attention_dim: int, dropout: float) -> None:
        super().__init__()
        self.tanh_branch = nn.Sequential(
            nn.Linear(hidden_dim, attention_dim), nn.Tanh(), nn.Dropout(dropout)
        )
        self.gate_branch = nn.Sequential(
            nn.Linear(hidden_dim, attention_dim), nn.Sigmoid(), nn.Dropout(dropout)
        )
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(self.tanh_branch(hidden) * self.gate_branch(hidden))[:, 0]


class ABMIL(MILNetwork):
    def __init__(self, config: MILConfig) -> None:
        super().__init__(config)
        self.attention = GatedAttention(config.hidden_dim, config.attention_dim, config.dropout)

    def pool(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        scores = self.attention(hidden)
        weights = scores.float().softmax(0).to(hidden.dtype)
        return weights @ hidden, weights, scores


class CLAMSingleBranch(ABMIL):
    """Gated attention MIL plus CLAM's instance-level clustering constraint."""

    def __init__(self, config: MILConfig) -> None:
        super().__init__(config)
        self.instance_classifiers = nn.ModuleList(
            nn.Linear(config.hidden_dim, 2) for _ in range(config.num_classes)
        )

    def instance_loss(self, output: MILOutput, target: torch.Tensor) -> torch.Tensor:
        """CLAM's clustering loss for one bag: for each class the bag holds, its k most attended
        tiles are that class's evidence and its k least attended are not; for each class it
        lacks (subtyping: more than two classes, or several labels), its k most attended tiles
        are not that class's evidence. Cross-entropy of the instance classifiers, averaged."""
        assert output.scores is not None and output.features is not None
        present = self._present_classes(target)
        count = output.scores.shape[0]
        k = max(1, min(self.config.clam_k, count // 2 if count > 1 else 1))
        top = output.scores.topk(k).indices
        bottom = (-output.scores).topk(k).indices
        subtyping = self.config.num_classes > 2 or self.config.problem_type == MULTI_LABEL
        losses = []
        for index, classifier in enumerate(self.instance_classifiers):
            if present[index]:
                tiles = torch.cat([top, bottom])
                labels = torch.cat([torch.ones_like(top), torch.zeros_like(bottom)])
            elif subtyping:
                tiles, labels = top, torch.zeros_like(top)
            else:
                continue
            logits = classifier(output.features[tiles]).float()
            losses.append(F.cross_entropy(logits, labels))
        if not losses:
            return output.logits.new_zeros(())
        return torch.stack(losses).mean()

    def _present_classes(self, target: torch.Tensor) -> list[bool]:
        target = target.reshape(-1)
        if self.config.problem_type == MULTI_LABEL:
            return [bool(v > 0.5) for v in target.tolist()]
        return [i == int(target.item()) for i in range(self.config.num_classes)]


class TransMILLayer(nn.Module):
    """Pre-norm multi-head self-attention with a residual (TransMIL's TransLayer)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(self.norm(tokens))
        p = self.dropout if self.training else 0.0
        mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return tokens + self.proj(mixed.transpose(1, 2).reshape(tokens.shape))

    def class_attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N,) the class token's attention to every token, averaged over heads (one query
        row: O(N), never the full N x N matrix)."""
        q, k, _ = self._qkv(self.norm(tokens))
        logits = (q[:, :, :1] @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        return logits.float().softmax(-1).mean(1)[0, 0]

    def _qkv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return q, k, v


class PPEG(nn.Module):
    """Pyramid position encoding: depth-wise 7x7, 5x5 and 3x3 convolutions over the tile square."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim) for size in (7, 5, 3)
        )

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        cls, tiles = tokens[:, :1], tokens[:, 1:]
        grid = tiles.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(MILNetwork):
    def __init__(self, config: MILConfig) -> None:
        super().__init__(config)
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.hidden_dim) * 0.02)
        attention_dropout = min(config.dropout, 0.1)  # the authors' 0.1
        self.blocks = nn.ModuleList(
            [
                TransMILLayer(config.hidden_dim, config.heads, attention_dropout)
                for _ in range(config.layers)
            ]
        )
        self.position = PPEG(config.hidden_dim)
        self.norm = nn.LayerNorm(config.hidden_dim)

    def pool(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        count = hidden.shape[0]
        side = math.ceil(math.sqrt(count))
        repeats = math.ceil(side * side / count)
        squared = hidden.repeat(repeats, 1)[: side * side]  # pad with the first tiles again
        tokens = torch.cat([self.cls_token[0], squared])[None]
        layers: list[TransMILLayer] = list(self.blocks)  # type: ignore[arg-type]
        for index, block in enumerate(layers):
            if index == len(layers) - 1:
                attention = block.class_attention(tokens)[1 : count + 1]
            tokens = block(tokens)
            if index == 0:
                tokens = self.position(tokens, side)
        weights = attention / attention.sum()
        return self.norm(tokens[0, 0]), weights.to(hidden.dtype), None


NETWORKS: dict[str, type[MILNetwork]] = {
    "mean": MeanPool,
    "max": MaxPool,
    "abmil": ABMIL,
    "clam_sb": CLAMSingleBranch,
    "transmil": TransMIL,
}


def build_mil(config: MILConfig) -> MILNetwork:
    """A randomly initialised network for ``config``."""
    config.check()
    return NETWORKS[config.model](config)
