"""What `vitkit bench` times: the model to bench (a checkpoint or a preset with seeded
weights), its FLOPs and weight bytes, and the contenders (vitkit at each precision, the
transformers / timm twins, onnxruntime) that run it."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vitkit.bench.peers import hf_twin, timm_twin, twin_problem
from vitkit.bench.timing import Contender
from vitkit.checkpoints import load_model
from vitkit.checkpoints.hub import source_kind
from vitkit.checkpoints.onnx import OnnxModel, export_onnx, quantize_onnx_int8
from vitkit.inference import runtime
from vitkit.models.config import parse_preset_name, preset
from vitkit.models.vit import ViT


# ---- FLOPs ------------------------------------------------------------------------------------
def load_bench_model(name: str, image_size: int | None) -> tuple[Any, dict[str, Any] | None]:
    """(model, its checkpoint's preprocessor_config or None) for ``vitkit bench --model``: a ViT
    preset name ("vit-..." that names no local path) with seeded random weights (LayerNorm eps
    1e-6, 1000 classes: timm's twin of the same name), else a checkpoint of any registered type
    (a path or a hub id: ``vitkit.checkpoints.hub.source_kind`` tells them apart)."""
    if source_kind(name) == "path" or not name.lower().startswith("vit-"):
        loaded = load_model(name, image_size=image_size)
        return loaded.model.eval(), loaded.processor_config
    parse_preset_name(name)  # raises with the list of sizes
    torch.manual_seed(0)
    overrides: dict[str, Any] = {"num_labels": 1000, "layer_norm_eps": 1e-6}
    if image_size:
        overrides["image_size"] = image_size
    return ViT(preset(name, **overrides)).eval(), None


def pick_threads(
    setting: int | str, batch_size: int, model: Any, device: torch.device
) -> int | None:
    """``--threads``: a number, or "auto" (by batch size and machine load); None off the CPU."""
    if device.type != "cpu":
        return None
    if setting == "auto":
        return runtime.auto_threads(batch_size, model)
    return int(setting)


def logits_path_flops(model: Any, image_hw: tuple[int, int] | None = None) -> float:
    """FLOPs of ``model.forward_logits``: for a ViT, the full forward less the last block's
    non-[CLS] work; the full forward for models without that fast path."""
    if not model.capabilities.cls_fast_path:
        return float(model.flops_per_image(image_hw))
    config = model.config
    height, width = image_hw or config.image_hw
    tokens = (height // config.patch_size) * (width // config.patch_size) + 1
    dim, hidden = config.hidden_size, config.intermediate_size
    # projection + MLP of the other tokens, and their attention rows (QK^T and AV)
    skipped_macs = (tokens - 1) * (dim * dim + 2 * dim * hidden + 2 * tokens * dim)
    return float(model.flops_per_image((height, width)) - 2 * skipped_macs)


def weight_bytes(module: Any) -> int:
    """Bytes of parameters and buffers, packed int8 weights included."""
    total = 0
    try:
        state = module.state_dict()
    except Exception:
        return 0
    for value in state.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, tuple):  # packed quantized Linear params: (weight, bias)
            total += sum(t.numel() * t.element_size() for t in value if isinstance(t, torch.Tensor))
    return total


# ---- the contenders of `vitkit bench` ---------------------------------------------------------
PEERS = ("transformers", "timm", "onnx")
_TWINS = {"transformers": (hf_twin, "transformers-sdpa"), "timm": (timm_twin, "timm")}


def forward_contenders(
    model: Any,
    *,
    precision: str = "fp32",
    against: Sequence[str] = ("transformers", "timm"),
    compile: bool | str = False,
    device: str | torch.device = "cpu",
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Contender]:
    """vitkit at ``precision`` first, then vitkit fp32 (when the precision differs) and the peers.

    Every contender gets ``model``'s weights and the same precision: int8 quantizes the peers'
    Linear layers with the same dynamic quantization; bf16/fp16 casts their weights; ``compile``
    compiles every PyTorch contender. ``model`` itself is not modified.
    """
    say = log or (lambda message: None)
    device = torch.device(device)
    precisions = [precision] if precision == "fp32" else [precision, "fp32"]
    contenders = [
        _vitkit_contender(
            model, chosen, compile, device, "vitkit" if chosen == precision else "vitkit fp32"
        )
        for chosen in precisions
    ]
    for peer in against:
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")
        contenders.extend(_peer_contenders(peer, model, precision, compile, device, workdir, say))
    return contenders


def _vitkit_contender(
    model: Any, precision: str, compile: bool | str, device: torch.device, name: str
) -> Contender:
    fast = runtime.optimize(
        copy.deepcopy(model), precision=precision, device=device, compile=compile, threads=None,
        force=True,
    )  # fmt: skip
    fast_path = "[CLS]-only last block" if model.capabilities.cls_fast_path else ""
    note = ", ".join(filter(None, [fast_path, compile_note(compile)]))
    flops = logits_path_flops(model, model.config.image_hw)
    return Contender(name, fast, flops, weight_bytes(fast.model), note)


def _peer_contenders(
    peer: str,
    model: Any,
    precision: str,
    compile: bool | str,
    device: torch.device,
    workdir: str | Path | None,
    say: Callable[[str], None],
) -> list[Contender]:
    """``peer``'s contenders, or none (said why) when it cannot run this model here."""
    image_hw = model.config.image_hw
    full_flops = float(model.flops_per_image(image_hw))
    if peer == "onnx":
        try:
            fast_flops = logits_path_flops(model, image_hw)
            return _onnx_contenders(model, precision, workdir, full_flops, fast_flops, say)
        except Exception as error:  # an export problem must not cost the other peers' run
            say(f"skipping onnx: {type(error).__name__}: {error}")
            return []
    problem = twin_problem(model)
    if problem:
        say(f"skipping {peer}: {problem}")
        return []
    build, name = _TWINS[peer]
    try:
        twin = build(model)
    except ImportError as error:
        say(f"skipping {peer}: {error}")
        return []
    return [_peer_contender(name, twin, precision, compile, device, full_flops)]


def compile_note(compile: bool | str) -> str:
    if not compile:
        return ""
    return "torch.compile" + (f" {compile}" if isinstance(compile, str) else "")


def _peer_contender(
    name: str,
    twin: Any,
    precision: str,
    compile: bool | str,
    device: torch.device,
    flops: float,
) -> Contender:
    twin = twin.eval().to(device)
    if precision == "int8":
        twin = runtime.quantize_int8(twin)
    elif precision in runtime.DTYPES:
        twin = twin.to(runtime.DTYPES[precision])
    dtype = runtime.DTYPES.get(precision, torch.float32)
    is_hf = hasattr(twin, "config") and hasattr(twin.config, "model_type")

    def call(pixel_values: torch.Tensor) -> Any:
        output = twin(pixel_values=pixel_values) if is_hf else twin(pixel_values)
        return output.logits if is_hf else output

    mode = compile if isinstance(compile, str) else None
    function = torch.compile(call, dynamic=False, mode=mode) if compile else call

    def forward(pixel_values: torch.Tensor) -> Any:
        with torch.inference_mode():
            return function(pixel_values.to(device, dtype))

    note = compile_note(compile)
    return Contender(name, forward, flops, weight_bytes(twin), note)


def _onnx_contenders(
    model: Any,
    precision: str,
    workdir: str | Path | None,
    full_flops: float,
    fast_flops: float,
    say: Callable[[str], None],
) -> list[Contender]:
    directory = Path(workdir or tempfile.mkdtemp(prefix="vitkit-bench-onnx-"))
    path = directory / "model-logits.onnx"
    if not path.exists():
        say(f"exporting {path}")
        export_onnx(model, path, outputs="logits")
    threads = torch.get_num_threads()
    contenders = []
    if precision == "int8":
        quantized = directory / "model-logits-int8.onnx"
        if not quantized.exists():
            quantize_onnx_int8(path, quantized)
        runner = OnnxModel(quantized, threads=threads)
        contenders.append(
            Contender(
                "onnxruntime int8", runner.forward_logits, fast_flops, quantized.stat().st_size
            )
        )
    runner32 = OnnxModel(path, threads=threads)
    contenders.append(
        Contender("onnxruntime", runner32.forward_logits, fast_flops, path.stat().st_size)
    )
    return contenders
