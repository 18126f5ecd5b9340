"""Every published ViT checkpoint format in, Hugging Face directories out.

``load_model(source)`` recognises, in this order:

- a directory with a HF ``config.json`` (model_type "vit") and model.safetensors or
  pytorch_model.bin (also sharded): ``ViTForImageClassification`` or a bare ``ViTModel``;
- a directory timm pushed to the Hub (config.json with "architecture", plus weights);
- a ``.npz`` file: Google's vit_jax release naming, with or without ``opt/target/``;
- a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` / ``.pth.tar`` file: a timm
  VisionTransformer state dict (bare or inside a training checkpoint), architecture read off the
  tensor shapes;
- anything else shaped "owner/name[@revision]" that is not a local path: a Hugging Face Hub id,
  downloaded into huggingface_hub's cache (or taken from it offline).

``save_pretrained(model, directory)`` writes the HF layout transformers loads with no conversion.
Importing this package is cheap: torch and the format modules load on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitkit.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from vitkit.models.config import ImageSize
    from vitkit.models.vit import ViT

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "detect_format",
    "imagenet_labels",
    "load_model",
    "save_pretrained",
]

FORMATS = ("hf", "timm", "npz", "hub")
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass
class LoadedModel:
    """A loaded checkpoint: the model (eval mode) and what came with it."""

    model: ViT
    processor_config: dict[str, Any] | None
    source: str
    format: str


def detect_format(source: str | Path) -> str:
    """ "hf", "timm", "npz" or "hub" for ``source``; CheckpointError naming it if none fits."""
    from vitkit.checkpoints.hub import is_hub_id

    path = Path(source).expanduser()
    if path.is_dir():
        return _directory_format(path)
    if path.is_file():
        if path.name == "config.json":
            return _directory_format(path.parent)
        if path.suffix == ".npz":
            return "npz"
        if path.suffix in _WEIGHT_SUFFIXES or path.name.endswith(".pth.tar"):
            return "timm"  # .pth.tar: what timm's train script names its checkpoints
        raise CheckpointError(
            f"{path}: not a checkpoint format vitkit knows (by its suffix {path.suffix or '(none)'}"
            "). Give a HF directory, a .safetensors/.pth/.bin timm state dict, a Google .npz "
            "file, or a Hub id like google/vit-base-patch16-224."
        )
    if is_hub_id(str(source)):
        return "hub"
    raise CheckpointError(
        f"{source}: no such file or directory (and not a Hugging Face Hub id like "
        "google/vit-base-patch16-224)"
    )


def _directory_format(directory: Path) -> str:
    from vitkit.checkpoints.hf import is_hf_directory
    from vitkit.checkpoints.timm import is_timm_directory

    if is_hf_directory(directory):
        return "hf"
    if is_timm_directory(directory):
        return "timm"
    if not (directory / "config.json").is_file():
        raise CheckpointError(
            f"{directory}: a directory without config.json: give the checkpoint file itself "
            "(.safetensors / .pth / .npz) or a Hugging Face directory (config.json + weights)"
        )
    raise CheckpointError(
        f"{directory / 'config.json'}: neither a Hugging Face ViT config (model_type 'vit') nor "
        "a timm config (architecture): vitkit reads only plain ViT checkpoints"
    )


def load_model(
    source: str | Path,
    *,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    num_attention_heads: int | None = None,
) -> LoadedModel:
    """Load any checkpoint format above into a ``vitkit.models.vit.ViT`` in eval mode.

    ``image_size`` resamples the position embeddings at load time (bicubic, antialiased, [CLS]
    kept: what timm does when it loads weights at another ``img_size``). ``num_attention_heads``
    overrides the head count for timm state dicts, whose shapes cannot tell it (see
    ``vitkit.checkpoints.timm``); the other formats record it.
    """
    kind = detect_format(source)
    path = Path(source).expanduser()
    if kind == "hub":
        from vitkit.checkpoints.hub import download

        path = download(str(source))
        kind = _directory_format(path)
        loaded = _load_directory(path, kind, image_size, device, num_attention_heads)
        return LoadedModel(loaded.model, loaded.processor_config, str(source), "hub")
    if path.is_file() and (path.name == "config.json" or _inside_hf_directory(path)):
        path = path.parent
        kind = _directory_format(path)
    if path.is_dir():
        loaded = _load_directory(path, kind, image_size, device, num_attention_heads)
        return LoadedModel(loaded.model, loaded.processor_config, str(source), kind)
    if kind == "npz":
        from vitkit.checkpoints.npz import load_npz

        return LoadedModel(load_npz(path, image_size, device), None, str(source), "npz")
    from vitkit.checkpoints.timm import load_timm_file

    model = load_timm_file(path, image_size, device, num_attention_heads)
    return LoadedModel(model, None, str(source), "timm")


def _inside_hf_directory(path: Path) -> bool:
    """A weights file HF wrote (model.safetensors, pytorch_model.bin) next to its config.json."""
    from vitkit.checkpoints.hf import is_hf_directory

    names = ("model.safetensors", "pytorch_model.bin")
    return path.name in names and is_hf_directory(path.parent)


def _load_directory(
    directory: Path,
    kind: str,
    image_size: ImageSize | None,
    device: str | torch.device,
    num_attention_heads: int | None = None,
) -> LoadedModel:
    if kind == "hf":
        from vitkit.checkpoints.hf import load_hf_directory

        model, processor = load_hf_directory(directory, image_size, device)
    else:
        from vitkit.checkpoints.timm import load_timm_directory

        model, processor = load_timm_directory(directory, image_size, device, num_attention_heads)
    return LoadedModel(model, processor, str(directory), kind)


def save_pretrained(
    model: ViT, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as a Hugging Face directory; see ``vitkit.checkpoints.hf.save_pretrained``."""
    from vitkit.checkpoints.hf import save_pretrained as save

    return save(model, directory, processor_config)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order, as HF's google/vit-* id2label
    spells them ("tench, Tinca tinca").

    The list is the WordNet lemmas of the ILSVRC-2012 synsets, taken from the files timm ships
    (timm/data/_info/imagenet_synsets.txt + imagenet_synset_to_lemma.txt, Apache-2.0).
    """
    return list(_imagenet_labels())


@lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    path = Path(__file__).resolve().parent.parent / "assets" / "imagenet1k_labels.txt"
    labels = tuple(path.read_text(encoding="utf-8").splitlines())
    if len(labels) != 1000:
        raise RuntimeError(f"{path} has {len(labels)} labels, not 1000")
    return labels
