"""ONNX export (`vitkit export`) and the onnxruntime backend, against PyTorch and transformers."""

from __future__ import annotations

from pathlib import Path

import onnxruntime  # noqa: F401  (a .[dev] package: missing must fail)
import onnxscript  # noqa: F401  (a .[dev] package: missing must fail)
import pytest
import torch

from vitkit.checkpoints.onnx import OnnxError, OnnxModel, export_onnx
from vitkit.cli import main


@pytest.fixture(scope="module")
def exported(tiny_hf_classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny transformers checkpoint exported by the CLI (which checks itself to 1e-4)."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert main(["export", "--format", "onnx", str(tiny_hf_classifier), str(path)]) == 0
    return path


def test_export_matches_transformers_logits_at_any_batch_size(
    exported: Path, tiny_hf_classifier: Path, photo_dir: Path
) -> None:
    import transformers

    import vitkit

    classifier = vitkit.load(tiny_hf_classifier, device="cpu")
    reference = transformers.ViTForImageClassification.from_pretrained(tiny_hf_classifier).eval()
    runner = OnnxModel(exported)
    photos = sorted(photo_dir.glob("*.jpg"))
    for batch in (photos[:1], photos):  # the batch dimension is dynamic
        pixels = classifier.prepare([str(p) for p in batch])
        with torch.inference_mode():
            expected = reference(pixel_values=pixels).logits
        torch.testing.assert_close(runner.forward_logits(pixels), expected, atol=1e-4, rtol=0)
        out = runner(pixels)
        assert out.logits is not None
        assert out.last_hidden_state.shape == (len(batch), 17, 64)


def test_onnx_classifier_predicts_and_embeds_like_pytorch(
    exported: Path, tiny_hf_classifier: Path, photo_dir: Path
) -> None:
    import vitkit

    photos = [str(p) for p in sorted(photo_dir.glob("*.jpg"))]
    torch_classifier = vitkit.load(tiny_hf_classifier, device="cpu")
    onnx_classifier = vitkit.load(exported)  # a .onnx path goes to the onnxruntime backend
    assert type(onnx_classifier.model).__name__ == "OnnxModel"
    assert onnx_classifier.labels == torch_classifier.labels
    expected = torch_classifier.predict(photos, top_k=3)
    got = onnx_classifier.predict(photos, top_k=3)
    for want, have in zip(expected, got, strict=True):
        assert [p["label"] for p in want] == [p["label"] for p in have]
        for a, b in zip(want, have, strict=True):
            assert abs(a["score"] - b["score"]) < 1e-4
    torch.testing.assert_close(
        torch.from_numpy(onnx_classifier.embed(photos, pool="mean")),
        torch.from_numpy(torch_classifier.embed(photos, pool="mean")),
        atol=1e-4,
        rtol=0,
    )


def test_logits_only_export_refuses_embeddings(tmp_path: Path) -> None:
    from vitkit.models.config import ViTConfig
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=16, patch_size=8, num_labels=3,
    )  # fmt: skip
    model = ViT(config).eval()
    path = export_onnx(model, tmp_path / "logits.onnx", outputs="logits")
    runner = OnnxModel(path)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(
            runner.forward_logits(pixels), model(pixels).logits, atol=1e-4, rtol=0
        )
    with pytest.raises(OnnxError, match="--outputs all"):
        runner.forward_features(pixels)


def test_missing_file_and_foreign_onnx_are_named(tmp_path: Path) -> None:
    with pytest.raises(OnnxError, match="no such ONNX file"):
        OnnxModel(tmp_path / "absent.onnx")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixel_values"], ["logits"])],
        "foreign",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), foreign)
    with pytest.raises(OnnxError, match="vitkit export"):
        OnnxModel(foreign)
