"""The same ViT in timm and in transformers, with vitkit's weights copied in: benchmark peers.

Only the plain classifier shape has a twin in both libraries (a head on the normalised [CLS]
token, no pooler); ``twin_problem`` says why a model has none.
"""

from __future__ import annotations

import tempfile
from typing import Any

from torch import nn

from vitkit.checkpoints import save_model
from vitkit.models.protocol import model_type_of
from vitkit.models.vit import ViT


def twin_problem(model: Any) -> str | None:
    """Why ``model`` has no timm/transformers twin, or None when it has."""
    config = model.config
    if type(model) is not ViT:
        return f"a {model_type_of(model)} model has no timm/transformers ViT twin here"
    if not config.num_labels:
        return "the model has no classification head"
    if config.add_pooling_layer:
        return "the model has a pooler (pre_logits) layer, which the peers' classifiers lack"
    if config.hidden_act != "gelu":
        return f"hidden_act {config.hidden_act!r} has no timm equivalent here"
    return None


def timm_twin(model: ViT) -> nn.Module:
    """timm's VisionTransformer with ``model``'s weights (timm's parameter names are ours)."""
    from timm.models.vision_transformer import VisionTransformer

    config = model.config
    twin = VisionTransformer(
        img_size=config.image_hw,
        patch_size=config.patch_size,
        in_chans=config.num_channels,
        num_classes=config.num_labels,
        global_pool="token",
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        qkv_bias=config.qkv_bias,
    )
    for module in twin.modules():  # timm hard-codes eps 1e-6; carry the model's
        if isinstance(module, nn.LayerNorm):
            module.eps = config.layer_norm_eps
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def hf_twin(model: ViT, attn_implementation: str = "sdpa") -> nn.Module:
    """transformers' ViTForImageClassification with ``model``'s weights.

    Goes through an HF directory on disk: transformers renames its modules between versions
    and maps the on-disk names at load time, so the file format is the stable contract.
    """
    import transformers  # optional: a peer only

    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="vitkit-peer-") as directory:
        save_model(model, directory)
        twin = transformers.ViTForImageClassification.from_pretrained(
            directory, attn_implementation=attn_implementation
        )
    return twin.eval()
