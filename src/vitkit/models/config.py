"""ViTConfig: the architecture of one Vision Transformer, named as Hugging Face's config.json names it.

Field names are exactly those of ``transformers.ViTConfig`` so a config.json written by either
library reads in the other. Three vitkit-only fields describe what HF cannot (they are written to
config.json too; transformers keeps unknown keys and ignores them):

- ``add_pooling_layer``: the dense+tanh layer on [CLS] exists. HF calls it the pooler; Google's
  in21k checkpoints call the same layer ``pre_logits``.
- ``classifier_uses_pooler``: the classification head reads the pooler output instead of the
  normalised [CLS] token. True for the paper's pre-training head (an MLP with one hidden layer =
  pre_logits + linear) and for timm/npz checkpoints with ``pre_logits``; HF's
  ``ViTForImageClassification`` never does this.
- ``drop_path_rate``: stochastic depth for fine-tuning (0 at inference, as everywhere).

Two fields describe the head's answer. ``problem_type`` is HF's own key ("single_label_classification":
softmax over exclusive classes; "multi_label_classification": one sigmoid per label), read and
written as transformers does. ``thresholds`` (one probability for every label, or one per label)
are the multi-label decision thresholds; they live in a ``"vitkit"`` section of config.json, which
transformers keeps as an unknown attribute and otherwise ignores. vitkit.inference.heads decides
what a head means from both.
The architecture variants of DINOv2 and the pathology foundation models (UNI, Virchow, ...) are
fields too, each off by default so a plain ViT's config.json is unchanged. Each is named as
transformers' Dinov2Config or timm's VisionTransformer names it; the other library's name is
accepted as an alias (``ALIASES``) wherever a config is read or overridden:

- ``layerscale_value`` (timm ``init_values``): LayerScale, a learned per-channel scale on each
  residual branch (``blocks.N.ls1.gamma``); None means no LayerScale.
- ``num_register_tokens`` (timm ``reg_tokens``): learned tokens after [CLS] that carry no
  position embedding of their own when ``no_embed_class``; never pooled.
- ``use_swiglu_ffn``: the MLP is SwiGLU, ``fc2(silu(a) * b)`` with ``[a; b] = fc1(x)``: timm's
  ``SwiGLUPacked`` and DINOv2's ``weights_in``/``weights_out`` are this same packed layout.
  ``intermediate_size`` is the width after gating (fc1 has twice as many outputs).
- ``class_token``: the model has a [CLS] token (timm ``class_token``).
- ``no_embed_class``: position embeddings cover the patches only, not the prefix tokens.
- ``global_pool``: what the head reads and what ``vitkit embed`` returns by default: "token"
  ([CLS]), "avg" (mean of the patch tokens) or "avg+token" ([CLS] concatenated with the mean
  patch token: Virchow's embedding, transformers' Dinov2ForImageClassification head).
- ``fc_norm``: the final LayerNorm applies to the pooled vector instead of the tokens (timm).
- ``dynamic_img_size``: at another input size, position embeddings are resampled with timm's
  rule (bicubic, antialiased; also transformers' Dinov2WithRegisters); off: transformers' ViT
  and Dinov2 rule (plain bicubic).
- ``family``: the published model family the weights were recognised as ("DINOv2", "UNI",
  "Virchow2", ...; see ``vitkit.models.families``), for display; "" when unknown.
- ``patch_embed``: how pixels become tokens: "linear" (the paper's: one linear projection of
  each patch, a strided convolution) or "conv" (a convolutional stem, Xiao et al. 2021, "Early
  convolutions help transformers see better": 3x3 stride-2 convolutions, each normalised per
  image and GELU'd, halving the resolution until the patch size, then a 1x1 projection). A conv
  stem lends a small ViT trained from scratch the locality a CNN has (vitkit's from-scratch
  recipe uses it); neither transformers nor timm can build it, so vitkit saves such a model in
  timm's layout with its whole config and only vitkit reloads it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ImageSize = int | tuple[int, int]
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def to_pair(size: ImageSize | list[int]) -> tuple[int, int]:
    """(height, width) from an int or a 2-sequence."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


@dataclass
class ViTConfig:
    model_type: ClassVar[str] = "vit"  # the key of vitkit.checkpoints.registry (HF's name too)

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: ImageSize = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    pooler_act: str = "tanh"
    num_labels: int = 0
    id2label: dict[int, str] = field(default_factory=dict)
    add_pooling_layer: bool = False
    classifier_uses_pooler: bool = False
    drop_path_rate: float = 0.0
    problem_type: str | None = None  # HF's key; None: softmax unless num_labels == 1 (as HF)
    thresholds: float | list[float] | None = None  # config.json "vitkit": {"thresholds": ...}
    layerscale_value: float | None = None
    num_register_tokens: int = 0
    use_swiglu_ffn: bool = False
    class_token: bool = True
    no_embed_class: bool = False
    global_pool: str = "token"
    fc_norm: bool = False
    dynamic_img_size: bool = False
    family: str = ""
    patch_embed: str = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, list):
            self.image_size = to_pair(self.image_size)
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if self.id2label and self.num_labels == 0:
            self.num_labels = len(self.id2label)
        if self.id2label and set(self.id2label) != set(range(self.num_labels)):
            raise ValueError(
                f"id2label has {len(self.id2label)} entries but num_labels is {self.num_labels}: "
                "give one label per class index 0..num_labels-1"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.classifier_uses_pooler and not self.add_pooling_layer:
            raise ValueError("classifier_uses_pooler=True needs add_pooling_layer=True")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"problem_type {self.problem_type!r} is not one of HF's {', '.join(PROBLEM_TYPES)}"
            )
        self.thresholds = check_thresholds(self.thresholds, self.num_labels)
        self._check_variants()

    def _check_variants(self) -> None:
        if self.global_pool == "map":
            raise ValueError(
                "global_pool='map' (attention pooling, SigLIP-style) is not supported: "
                f"use one of {', '.join(GLOBAL_POOLS)}"
            )
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(
                f"global_pool {self.global_pool!r}: use one of {', '.join(GLOBAL_POOLS)}"
            )
        if not self.class_token and (
            "token" in self.global_pool or self.add_pooling_layer or self.classifier_uses_pooler
        ):
            raise ValueError(
                f"class_token=False leaves no [CLS] token for global_pool={self.global_pool!r} "
                "or a pooler: use global_pool='avg'"
            )
        if self.global_pool != "token" and self.classifier_uses_pooler:
            raise ValueError(
                "classifier_uses_pooler=True reads [CLS]: it needs global_pool='token'"
            )
        if self.fc_norm and self.global_pool == "avg+token":
            raise ValueError(
                "fc_norm normalises one pooled vector: not with global_pool='avg+token'"
            )
        if self.use_swiglu_ffn and self.hidden_act != "silu":
            raise ValueError(
                f"use_swiglu_ffn=True gates with SiLU: set hidden_act='silu' "
                f"(not {self.hidden_act!r})"
            )
        if self.patch_embed not in PATCH_EMBEDS:
            raise ValueError(
                f"patch_embed {self.patch_embed!r}: use one of {', '.join(PATCH_EMBEDS)}"
            )
        if self.patch_embed == "conv" and (
            self.patch_size < 2 or self.patch_size & (self.patch_size - 1)
        ):
            raise ValueError(
                f"patch_embed='conv' halves the resolution per convolution: it needs a patch size "
                f"that is a power of two (2, 4, 8, 16), not {self.patch_size}"
            )
        if self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, not {self.num_register_tokens}")

    # ---- derived quantities -------------------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        return to_pair(self.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        height, width = self.image_hw
        return (height // self.patch_size, width // self.patch_size)

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: [CLS] (if any), then the register tokens."""
        return int(self.class_token) + self.num_register_tokens

    @property
    def num_pos_embed_prefix(self) -> int:
        """Prefix tokens that have a position embedding of their own (none with no_embed_class)."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    @property
    def pooled_size(self) -> int:
        """Width of the vector ``global_pool`` gives (the head's input, the default embedding)."""
        return self.hidden_size * (2 if self.global_pool == "avg+token" else 1)

    @property
    def default_pool(self) -> str:
        """The embedding every command returns unless told otherwise (``vitkit embed --pool``)."""
        return GLOBAL_POOL_TO_EMBEDDING[self.global_pool]

    @property
    def variant_features(self) -> list[str]:
        """The variant fields set away from their default: what transformers' ViT cannot express
        ([] for a plain ViT; ``family`` is a label, not a feature)."""
        return [
            name
            for name in _VARIANT_FIELDS
            if name != "family" and getattr(self, name) != _DEFAULTS[name]
        ]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def label2id(self) -> dict[str, int]:
        return {label: index for index, label in self.id2label.items()}

    def labels(self) -> list[str]:
        """Label names in class-index order (``LABEL_i`` where id2label lacks one)."""
        return [self.id2label.get(i, f"LABEL_{i}") for i in range(self.num_labels)]

    def replace(self, **changes: Any) -> ViTConfig:
        """A copy with ``changes`` (timm's names accepted too, see ``ALIASES``)."""
        return dataclasses.replace(self, **resolve_aliases(changes))

    # ---- config.json ------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json dict that ``transformers.ViTConfig.from_pretrained`` reads as is."""
        data = dataclasses.asdict(self)
        for name in _VARIANT_FIELDS:  # a plain ViT's config.json stays what it always was
            if data[name] == _DEFAULTS[name]:
                data.pop(name)
        data["image_size"] = (
            self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        )
        labels = self.labels()
        data["id2label"] = {str(i): label for i, label in enumerate(labels)}
        data["label2id"] = {label: i for i, label in enumerate(labels)}
        data.pop("num_labels")  # HF derives it from id2label
        thresholds = data.pop("thresholds")
        if thresholds is not None:
            data["vitkit"] = {"thresholds": thresholds}
        data["model_type"] = "vit"
        data["architectures"] = ["ViTForImageClassification" if self.num_labels else "ViTModel"]
        data["encoder_stride"] = self.patch_size
        data["pooler_output_size"] = self.hidden_size
        return data

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> ViTConfig:
        """Read a config.json dict; unknown keys (torch_dtype, architectures, ...) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in resolve_aliases(data).items() if k in known}
        kwargs["thresholds"] = (data.get("vitkit") or {}).get("thresholds")
        id2label = data.get("id2label") or {}
        architectures = data.get("architectures") or []
        is_classifier = any("Classification" in name for name in architectures)
        if "num_labels" not in data:
            kwargs["num_labels"] = len(id2label) if (is_classifier or not architectures) else 0
        if not is_classifier and architectures:
            # A bare ViTModel (e.g. google/vit-large-patch16-224-in21k): its config still lists
            # id2label placeholders, but there is no head to read them with.
            kwargs["num_labels"] = 0
            kwargs["id2label"] = {}
        if "add_pooling_layer" not in data:
            # HF: ViTModel has a pooler, ViTForImageClassification does not.
            kwargs["add_pooling_layer"] = bool(architectures) and not is_classifier
        if data.get("pooler_output_size") not in (None, data.get("hidden_size", cls.hidden_size)):
            raise ValueError("pooler_output_size different from hidden_size is not supported")
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path) -> ViTConfig:
        return cls.from_hf_dict(json.loads(Path(path).read_text()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n"


def check_thresholds(
    thresholds: float | list[float] | None, num_labels: int
) -> float | list[float] | None:
    """``thresholds`` as stored: None, one float, or one float per label, each in [0, 1]."""
    if thresholds is None:
        return None
    values = [thresholds] if isinstance(thresholds, int | float) else list(thresholds)
    if not isinstance(thresholds, int | float) and len(values) != num_labels:
        raise ValueError(
            f"thresholds has {len(values)} values but the head has {num_labels} labels: "
            "give one threshold, or one per label"
        )
    if any(not 0.0 <= float(v) <= 1.0 for v in values):
        raise ValueError(f"thresholds must be probabilities in [0, 1], got {values}")
    return float(thresholds) if isinstance(thresholds, int | float) else [float(v) for v in values]


GLOBAL_POOLS = ("token", "avg", "avg+token")
PATCH_EMBEDS = ("linear", "conv")
# global_pool -> the name of the same vector among the embedding pools (vitkit embed --pool).
GLOBAL_POOL_TO_EMBEDDING = {"token": "cls", "avg": "mean", "avg+token": "cls+mean"}
_VARIANT_FIELDS = (
    "layerscale_value",
    "num_register_tokens",
    "use_swiglu_ffn",
    "class_token",
    "no_embed_class",
    "global_pool",
    "fc_norm",
    "dynamic_img_size",
    "family",
    "patch_embed",
)
_DEFAULTS: dict[str, Any] = {
    name: ViTConfig.__dataclass_fields__[name].default for name in _VARIANT_FIELDS
}
# timm's keyword -> the field here (transformers' name where it has one).
ALIASES = {"init_values": "layerscale_value", "reg_tokens": "num_register_tokens"}


def resolve_aliases(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with timm's names (``init_values``, ``reg_tokens``) renamed to the fields'."""
    resolved = dict(values)
    for alias, name in ALIASES.items():
        if alias in resolved:
            value = resolved.pop(alias)
            if name not in resolved:
                resolved[name] = value
    return resolved


# The paper's model sizes (Table 1) plus the DeiT Tiny/Small sizes timm ships.
_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768
    ),
    "small": dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536
    ),
    "base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    "huge": dict(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120
    ),
}
_SIZE_LETTER = {"ti": "tiny", "s": "small", "b": "base", "l": "large", "h": "huge"}


def preset(name: str, **overrides: Any) -> ViTConfig:
    """A config by name: ``vit-base-patch16-224``, ``vit_large_patch14_224``, ``ViT-B/16`` ...

    The resolution defaults to 224; anything else can be overridden by keyword.
    """
    size, patch, image = parse_preset_name(name)
    return ViTConfig(**_SIZES[size], patch_size=patch, image_size=image).replace(**overrides)


def parse_preset_name(name: str) -> tuple[str, int, int]:
    """(size, patch, image) from the naming schemes HF, timm and the paper use."""
    text = name.lower().replace("_", "-")
    if text.startswith("vit-") and "/" in text and "patch" not in text:
        # the paper's style: ViT-B/16
        letter, _, patch_text = text[4:].partition("/")
        if letter in _SIZE_LETTER and patch_text.isdigit():
            return _SIZE_LETTER[letter], int(patch_text), 224
    text = text.split("/")[-1]  # a hub id: google/vit-base-patch16-224
    parts = text.split("-")
    size = next((p for p in parts if p in _SIZES), None)
    patch = next((int(p[5:]) for p in parts if p.startswith("patch") and p[5:].isdigit()), None)
    image = next((int(p) for p in parts if p.isdigit()), 224)
    if size is None or patch is None:
        raise ValueError(
            f"unknown ViT preset {name!r}: use a name like 'vit-base-patch16-224' "
            f"(sizes: {', '.join(_SIZES)}; patch 14, 16 or 32; any image size)"
        )
    return size, patch, image


PRESET_NAMES = [
    f"vit-{size}-patch{patch}-{image}"
    for size in _SIZES
    for patch in (14, 16, 32)
    for image in (224, 384)
]
