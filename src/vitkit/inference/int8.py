"""int8 on a CPU: the transformer blocks' Linear layers with int8 weights, activations quantized
per call (dynamic quantization), built in one pass over the weights.

The arithmetic is ``torch.ao.quantization.quantize_dynamic`` with ``per_channel_dynamic_qconfig``:
the same observer (symmetric, per output channel), ``quantize_per_channel``, ``linear_prepack``
and ``linear_dynamic(reduce_range=True)`` kernels, so the logits are bit-identical to it (a test
checks). What differs is the cost of getting there, which a user pays at every start of `vitkit
predict --precision int8`: ViT-B/16 took 4.5 s of CPU to quantize on this 2-core EPYC, because
``quantize_dynamic`` (1) deep-copies the whole fp32 model first, (2) builds each quantized Linear
around a zero weight of full size and prepacks it (one oneDNN weight reorder thrown away per
layer), then (3) prepacks the real weight. Here the copy shares every tensor it does not replace
and each weight is prepacked once.

``quantize_dynamic`` is deprecated since torch 2.9 in favour of torchao, whose int8 path needs
torch.compile to be fast on a CPU; the fbgemm/oneDNN kernels used here are still PyTorch's fastest
eager int8 Linear.
"""

from __future__ import annotations

import copy
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

# Exactly these types are swapped (quantize_dynamic's default mapping for Linear layers).
_FLOAT_LINEARS = (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)


def int8_engine() -> str:
    """The quantized backend: oneDNN where present (10% faster than fbgemm for ViT-B's
    Linear layers on an AVX2 EPYC, same outputs), else PyTorch's default."""
    engines = torch.backends.quantized.supported_engines
    return "onednn" if "onednn" in engines else torch.backends.quantized.engine


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight (per output channel) and dynamically quantized inputs;
    torch's ``DynamicQuantizedLinear`` without its throw-away prepack."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        from torch.ao.quantization import per_channel_dynamic_qconfig

        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        observer = per_channel_dynamic_qconfig.weight()
        observer(weight)
        scale, zero_point = observer.calculate_qparams()
        with warnings.catch_warnings():  # the deprecation notice of quantized tensors
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
            qweight = torch.quantize_per_channel(
                weight, scale.double(), zero_point.long(), observer.ch_axis, torch.qint8
            )
        bias = None if linear.bias is None else linear.bias.detach().float()
        # The packed weight carries its backend (oneDNN or fbgemm): the forward needs no setting.
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=True).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype=qint8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose transformer-block Linear layers (every Linear for a model without
    ``blocks``) are int8 ``Int8Linear``; the caller's model is left as it is.

    The patch embedding (a conv) and the head stay fp32: they are ~1% of the work and the head
    decides the ranking. The copy shares the fp32 tensors it keeps with ``model``.
    """
    # vitkit and timm name the transformer blocks "blocks"; other models: every Linear
    blocks = getattr(model, "blocks", None)
    scope = blocks if isinstance(blocks, nn.Module) else model
    targets = {id(m) for m in scope.modules() if type(m) in _FLOAT_LINEARS}
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = int8_engine()
    try:
        with torch.no_grad():
            # The copy shares every tensor and the Linear modules to be replaced (then swapped):
            # only the module tree is new.
            memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
            memo.update({id(m): m for m in scope.modules() if id(m) in targets})
            quantized = copy.deepcopy(model, memo)
            places = [
                (module, name, child)
                for module in quantized.modules()
                for name, child in module.named_children()
                if id(child) in targets
            ]
            for (module, name, _), layer in zip(places, _int8_layers(places), strict=True):
                setattr(module, name, layer)
    finally:
        torch.backends.quantized.engine = previous
    return quantized


def _int8_layers(places: list[tuple[nn.Module, str, nn.Module]]) -> list[Int8Linear]:
    """An ``Int8Linear`` per Linear, the layers spread over the cores, one intra-op thread each.

    Why not torch's own threads: its min/max, quantize and prepack ops barely gain from a second
    OpenMP thread and lose a lot when a core is busy (ViT-B on this 2-core EPYC under load:
    1.4 s on one thread, 3.4 s on two); independent layers need no barrier at all.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, min(len(places), cores or 1))

    def build(place: tuple[nn.Module, str, nn.Module]) -> Int8Linear:
        torch.set_num_threads(1)  # per thread: the caller's own setting is left alone
        linear = place[2]
        assert isinstance(linear, nn.Linear)
        return Int8Linear(linear)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vitkit-int8") as pool:
        return list(pool.map(build, places))
