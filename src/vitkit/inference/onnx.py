"""ONNX export of a vitkit ViT and an onnxruntime model that stands in for it.

``export_onnx(model, "vit.onnx")`` writes one self-describing file: the graph (dynamic batch
size), and in its metadata the ViTConfig (config.json text) and, when given, the
preprocessor_config.json, so ``load_classifier("vit.onnx")`` needs nothing else.

``OnnxModel`` answers the calls ``vitkit.Classifier`` makes of a ViT (``model(pixel_values)``
-> ViTOutput, ``forward_logits``, ``forward_features``, ``config``), so predict, embed and the
server run on onnxruntime unchanged: ``Classifier(OnnxModel("vit.onnx"), processor)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vitkit.errors import VitkitError
from vitkit.models.config import ViTConfig
from vitkit.models.vit import ViT, ViTOutput

Outputs = Literal["all", "logits"]
CONFIG_KEY = "vitkit_config"
PROCESSOR_KEY = "vitkit_preprocessor_config"
# protobuf caps one file at 2 GiB; bigger models (ViT-H) keep their weights beside the graph.
_SINGLE_FILE_LIMIT = 1.8e9


class OnnxError(VitkitError):
    """Exporting to or running an ONNX file failed."""


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
    if config.add_pooling_layer:
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
            f"ONNX export of the {model.config.hidden_size}-wide ViT failed: {error}. "
            "Check that onnx and onnxscript are installed (pip install 'vitkit[onnx]')"
        ) from error
    assert program is not None
    metadata = {CONFIG_KEY: model.config.to_json_string()}
    if processor_config is not None:
        metadata[PROCESSOR_KEY] = json.dumps(processor_config)
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=size_bytes > _SINGLE_FILE_LIMIT)
    return path


def quantize_onnx_int8(source: str | Path, target: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantization of the MatMuls (weights per channel)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    quantized = onnx.load(str(target))  # keep the config metadata the quantizer drops
    existing = {prop.key for prop in quantized.metadata_props}
    for prop in model.metadata_props:
        if prop.key not in existing:
            quantized.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(quantized, str(target))
    return Path(target)


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

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


class OnnxModel(nn.Module):
    """An exported ViT run by onnxruntime, called like ``vitkit.models.vit.ViT`` (inference only)."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
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
        self.config = ViTConfig.from_hf_dict(json.loads(metadata[CONFIG_KEY]))
        self.processor_config: dict[str, Any] | None = (
            json.loads(metadata[PROCESSOR_KEY]) if PROCESSOR_KEY in metadata else None
        )
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.pooler = None  # the pooler layer is inside the graph; only its output is visible

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

    def flops_per_image(self, image_hw: tuple[int, int] | None = None) -> int:
        with torch.device("meta"):
            return ViT(self.config).flops_per_image(image_hw)


def load_classifier(
    path: str | Path, *, threads: int | None = None, name: str | None = None
) -> Any:
    """A ``vitkit.Classifier`` that runs the ONNX file at ``path`` on onnxruntime."""
    from vitkit.images.processor import ImageProcessor
    from vitkit.inference.classifier import Classifier

    model = OnnxModel(path, threads=threads)
    processor = (
        ImageProcessor.from_dict(model.processor_config)
        if model.processor_config is not None
        else ImageProcessor.for_config(model.config)
    )
    return Classifier(model, processor, name=name or str(path))  # type: ignore[arg-type]
