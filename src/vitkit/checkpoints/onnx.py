"""ONNX as a checkpoint format: export a transformer (ViT, DeiT student) and run the file.

``export_onnx(model, "vit.onnx")`` writes one self-describing file: the graph (dynamic batch
size), and in its metadata the model type, its config (config.json text) and, when given, the
preprocessor_config.json, so ``vitkit.load("vit.onnx")`` needs nothing else.

``OnnxModel`` meets the model protocol (``vitkit.models.protocol``: ``forward_logits``,
``forward_embedding``, ``config``, ``capabilities``), so predict, embed, eval and the server run on
onnxruntime unchanged. onnx / onnxruntime / onnxscript are optional (``pip install 'vitkit[onnx]'``):
they are imported where they are used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vitkit.atomic_files import atomic_path
from vitkit.errors import OnnxError, UnsupportedOperationError
from vitkit.models.config import ViTConfig
from vitkit.models.families import pooler_is_cls
from vitkit.models.protocol import POOLS, Capabilities, check_pool, require
from vitkit.models.vit import ViT, ViTOutput, pool_tokens

__all__ = ["OnnxError", "OnnxModel", "export_onnx", "is_onnx_file", "quantize_onnx_int8"]

Outputs = Literal["all", "logits"]
CONFIG_KEY = "vitkit_config"
MODEL_TYPE_KEY = "vitkit_model_type"
PREFIX_KEY = "vitkit_num_prefix_tokens"
PROCESSOR_KEY = "vitkit_preprocessor_config"
# protobuf caps one file at 2 GiB; bigger models (ViT-H) keep their weights beside the graph.
_SINGLE_FILE_LIMIT = 1.8e9


def is_onnx_file(path: Path) -> bool:
    return path.suffix == ".onnx"


class _ExportWrapper(nn.Module):
    """Tuple outputs for the exporter: logits (if any), last_hidden_state, pooler_output (if any)."""

    def __init__(self, model: ViT, outputs: Outputs) -> None:
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.outputs == "logits":
            return (self.model.forward_logits(pixel_values),)
        out = self.model(pixel_values)
        tensors = [out.logits, out.last_hidden_state, out.pooler_output]
        return tuple(t for t in tensors if t is not None)


def output_names(config: ViTConfig, outputs: Outputs) -> list[str]:
    if outputs == "logits":
        return ["logits"]
    names = ["logits"] if config.num_labels else []
    names.append("last_hidden_state")
    if config.add_pooling_layer or pooler_is_cls(config):  # DINOv2's pooler_output is [CLS]
        names.append("pooler_output")
    return names


def export_onnx(
    model: ViT,
    path: str | Path,
    *,
    image_hw: tuple[int, int] | None = None,
    outputs: Outputs = "all",
    processor_config: dict[str, Any] | None = None,
    opset: int = 18,
) -> Path:
    """Write ``model`` to ``path`` as ONNX with a dynamic batch dimension.

    outputs="all": logits, last_hidden_state (and pooler_output), for predict and embed;
    "logits": the classification path only (``ViT.forward_logits``), ~6% less work.
    """
    require(model, "onnx_export", "be exported to ONNX")
    if outputs == "logits" and not model.config.num_labels:
        raise OnnxError("outputs='logits' needs a model with a classification head")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    height, width = image_hw or model.config.image_hw
    example = torch.zeros(2, model.config.num_channels, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    size_bytes = sum(p.numel() * 4 for p in model.parameters())
    try:
        program = torch.onnx.export(
            _ExportWrapper(model, outputs).eval(),
            (example,),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=output_names(model.config, outputs),
            dynamic_shapes={"pixel_values": {0: batch}},
            opset_version=opset,
            verbose=False,
        )
    except Exception as error:  # the exporter raises many types; name the model and the fix
        raise OnnxError(
            f"ONNX export of the {model.config.hidden_size}-wide {model.config.model_type} failed: {error}. "
            "Check that onnx and onnxscript are installed (pip install 'vitkit[onnx]')"
        ) from error
    assert program is not None
    metadata = {
        CONFIG_KEY: model.config.to_json_string(),
        MODEL_TYPE_KEY: model.config.model_type,
        PREFIX_KEY: str(model.num_prefix_tokens),
    }
    if processor_config is not None:
        metadata[PROCESSOR_KEY] = json.dumps(processor_config)
    program.model.metadata_props.update(metadata)
    if size_bytes > _SINGLE_FILE_LIMIT:  # graph + a weights file that names it: written in place
        program.save(str(path), external_data=True)
        return path
    with atomic_path(path) as staging:
        program.save(str(staging))
    return path


def quantize_onnx_int8(source: str | Path, target: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantization of the MatMuls (weights per channel)."""
    import onnx  # optional dependencies: pip install 'vitkit[onnx]'
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    with atomic_path(Path(target)) as staging:
        quantize_dynamic(str(source), str(staging), weight_type=QuantType.QInt8, per_channel=True)
        quantized = onnx.load(str(staging))  # keep the config metadata the quantizer drops
        existing = {prop.key for prop in quantized.metadata_props}
        for prop in model.metadata_props:
            if prop.key not in existing:
                quantized.metadata_props.add(key=prop.key, value=prop.value)
        onnx.save(quantized, str(staging))
    return Path(target)


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort  # optional: pip install 'vitkit[onnx]'

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    providers = [
        name
        for name in ("CUDAExecutionProvider", "CPUExecutionProvider")
        if name in ort.get_available_providers()
    ]
    return ort.InferenceSession(str(path), options, providers=providers)


ConfigReader = Callable[[dict[str, Any]], Any]


class OnnxModel(nn.Module):
    """An exported model run by onnxruntime, meeting the model protocol (inference only).

    ``read_config`` turns the file's config dict into the model type's config class; without it
    only a ViT export opens (``vitkit.checkpoints.load_model`` passes the registry's reader).
    """

    display_type = "onnx"

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        read_config: ConfigReader | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxError(f"{self.path}: no such ONNX file (write one with `vitkit export`)")
        try:
            self.session = _session(self.path, threads)
        except Exception as error:
            raise OnnxError(f"{self.path}: onnxruntime could not load it: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in metadata:
            raise OnnxError(
                f"{self.path}: no {CONFIG_KEY} metadata; export it with `vitkit export` "
                "so the file carries its config"
            )
        self.model_type = metadata.get(MODEL_TYPE_KEY, "vit")
        self.config = self._read_config(json.loads(metadata[CONFIG_KEY]), read_config)
        self.num_prefix_tokens = int(metadata.get(PREFIX_KEY, "1"))
        self.processor_config: dict[str, Any] | None = (
            json.loads(metadata[PROCESSOR_KEY]) if PROCESSOR_KEY in metadata else None
        )
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.pooler = None  # the pooler layer is inside the graph; only its output is visible

    def _read_config(self, data: dict[str, Any], read_config: ConfigReader | None) -> Any:
        if read_config is not None:
            return read_config(data)
        if self.model_type != "vit":
            raise OnnxError(
                f"{self.path} holds a {self.model_type} model: open it with "
                "vitkit.load / vitkit.checkpoints.load_model, which know every model type"
            )
        return ViTConfig.from_hf_dict(data)

    @property
    def capabilities(self) -> Capabilities:
        """The pools the graph's outputs allow: a model with ``fc_norm`` keeps that LayerNorm
        inside the graph, after pooling, so only its unpooled tokens can be had here."""
        pools: list[str] = []
        config = self.config
        if "last_hidden_state" in self.output_names:
            pools += ["tokens"]
            if not getattr(config, "fc_norm", False):
                pools += ["mean"]
                if getattr(config, "class_token", True):
                    pools += ["cls", "cls+mean"]
        if "pooler_output" in self.output_names:
            pools.append("pooler")
        default = getattr(config, "default_pool", "cls")
        return Capabilities(
            pools=tuple(pool for pool in POOLS if pool in pools), default_pool=default
        )

    def run(self, pixel_values: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        missing = [name for name in names if name not in self.output_names]
        if missing:
            raise OnnxError(
                f"{self.path} has no output {missing[0]!r} (it has {self.output_names}); "
                "re-export with `vitkit export --outputs all`"
            )
        feed = {"pixel_values": pixel_values.detach().float().cpu().contiguous().numpy()}
        arrays = self.session.run(names, feed)
        return {name: torch.from_numpy(array) for name, array in zip(names, arrays, strict=True)}

    def forward(self, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> ViTOutput:
        results = self.run(pixel_values, self.output_names)
        tokens = results.get("last_hidden_state")
        if tokens is None:
            raise OnnxError(f"{self.path} has logits only: use forward_logits / predict")
        return ViTOutput(results.get("logits"), tokens, results.get("pooler_output"))

    def forward_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.run(pixel_values, ["logits"])["logits"]

    def forward_features(self, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.run(pixel_values, ["last_hidden_state"])["last_hidden_state"], None, None

    def forward_embedding(
        self, pixel_values: torch.Tensor, pool: str | None = None
    ) -> torch.Tensor:
        if not self.capabilities.pools:
            raise OnnxError(f"{self.path} has logits only: re-export with `--outputs all`")
        pool = pool or self.capabilities.default_pool
        check_pool(self, pool)
        if pool == "pooler":
            return self.run(pixel_values, ["pooler_output"])["pooler_output"]
        tokens = self.forward_features(pixel_values)[0]
        return pool_tokens(tokens, pool, self.num_prefix_tokens)

    def reset_head(self, id2label: dict[int, str]) -> None:
        raise UnsupportedOperationError(
            f"{self.path}: an ONNX graph is fixed; fine-tune the checkpoint it was exported from"
        )

    def num_parameters(self) -> int:
        with torch.device("meta"):
            return ViT(ViTConfig.from_hf_dict(self.config.to_hf_dict())).num_parameters()

    def flops_per_image(self, image_hw: tuple[int, int] | None = None) -> int:
        with torch.device("meta"):
            return ViT(ViTConfig.from_hf_dict(self.config.to_hf_dict())).flops_per_image(image_hw)
