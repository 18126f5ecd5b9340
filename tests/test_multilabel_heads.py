"""Multi-label heads: sigmoid scores equal transformers' pipeline, problem_type and thresholds
travel in config.json, and the answer lists the labels that pass their thresholds.

The checkpoints are random ViTForImageClassification models built by transformers in the test;
the images are real photos (scikit-image, scikit-learn).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import vitkit
from vitkit.cli import main
from vitkit.errors import HeadError
from vitkit.inference.heads import MULTI_LABEL, SINGLE_LABEL, head_for, parse_thresholds
from vitkit.models.config import ViTConfig

TOLERANCE = 1e-4
LABELS = ["cat", "coffee", "person", "flower", "building", "tissue"]


def save_hf_classifier(directory: Path, seed: int, **config_changes: object) -> Path:
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        **config_changes,
    )
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():  # spread the sigmoid scores over (0, 1) instead of ~0.5 everywhere
        model.classifier.weight.normal_(0, 1.0)
        model.classifier.bias.normal_(0, 1.0)
    model.save_pretrained(directory)
    transformers.ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def multilabel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf_classifier(
        tmp_path_factory.mktemp("multilabel-vit"), seed=3, problem_type=MULTI_LABEL
    )


def test_scores_equal_transformers_pipeline_sigmoid(multilabel_dir: Path, photo_dir: Path) -> None:
    files = sorted(str(p) for p in photo_dir.glob("*.jpg"))
    pipe = transformers.pipeline("image-classification", model=str(multilabel_dir), device="cpu")
    classifier = vitkit.load(multilabel_dir)
    assert classifier.head is not None and classifier.head.multi_label
    ours = classifier.predict(files)
    for explicit in ("sigmoid", None):  # the pipeline's own default follows problem_type too
        kwargs = {"function_to_apply": explicit} if explicit else {}
        theirs = pipe(files, top_k=len(LABELS), **kwargs)
        for mine, reference in zip(ours, theirs, strict=True):
            assert [p["label"] for p in mine] == [p["label"] for p in reference]
            for a, b in zip(mine, reference, strict=True):
                assert abs(a["score"] - b["score"]) < TOLERANCE
    # the answer: every label, best first, each with its threshold and decision
    for answer in ours:
        assert len(answer) == len(LABELS)
        assert all(p["threshold"] == 0.5 and p["positive"] == (p["score"] >= 0.5) for p in answer)
    assert any(p["positive"] for a in ours for p in a) and not all(
        p["positive"] for a in ours for p in a
    )


def test_problem_type_and_thresholds_round_trip_through_transformers(
    multilabel_dir: Path, tmp_path: Path, photo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = vitkit.load(multilabel_dir)
    assert loaded.config.problem_type == MULTI_LABEL
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    loaded.model.config = loaded.config.replace(thresholds=thresholds)
    loaded.save(tmp_path / "saved")
    written = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert written["problem_type"] == MULTI_LABEL
    assert written["vitkit"] == {"thresholds": thresholds} and "thresholds" not in written

    again = vitkit.load(tmp_path / "saved")
    assert again.head is not None and again.head.thresholds == tuple(thresholds)
    assert main(["info", str(tmp_path / "saved"), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)["head"]
    assert card["problem_type"] == MULTI_LABEL and card["thresholds"]["person"] == 0.3
    theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path / "saved").eval()
    assert theirs.config.problem_type == MULTI_LABEL  # and the vitkit section is left alone
    pixels = again.prepare([str(photo_dir / "chelsea.jpg"), str(photo_dir / "coffee.jpg")])
    with torch.no_grad():
        reference = theirs(pixel_values=pixels).logits
    assert (again.logits(pixels) - reference).abs().max().item() < TOLERANCE


def test_which_heads_get_sigmoid() -> None:
    def kind(**fields: object) -> str:
        config = ViTConfig(hidden_size=64, num_attention_heads=4, **fields)  # type: ignore[arg-type]
        return head_for(config, config.labels()).kind

    three = dict(num_labels=3)
    assert kind(**three) == "softmax"  # transformers' rule: several labels, no problem_type
    assert kind(num_labels=1) == "sigmoid"  # ... and one label
    assert kind(problem_type=MULTI_LABEL, **three) == "sigmoid"
    assert kind(problem_type=SINGLE_LABEL, num_labels=1) == "softmax"
    # vitkit's rule beyond transformers: saved thresholds exist only for multi-label heads
    assert kind(thresholds=[0.3, 0.4, 0.5], **three) == "sigmoid"
    config = ViTConfig(hidden_size=64, num_attention_heads=4, num_labels=3)
    assert head_for(config, config.labels(), problem_type="multi_label").kind == "sigmoid"
    with pytest.raises(HeadError, match="regression"):
        kind(problem_type="regression", **three)
    with pytest.raises(HeadError, match="single-label"):
        head_for(config, config.labels(), threshold=0.3)
    with pytest.raises(ValueError, match="one per label"):
        ViTConfig(hidden_size=64, num_attention_heads=4, num_labels=3, thresholds=[0.5, 0.5])


def test_labels_that_pass_are_never_cut_and_thresholds_override(multilabel_dir: Path) -> None:
    config = vitkit.load(multilabel_dir).config.replace(thresholds=[0.9, 0.1, 0.5, 0.5, 0.5, 0.5])
    head = head_for(config, LABELS)
    probabilities = torch.tensor([[0.8, 0.2, 0.05, 0.6, 0.3, 0.7]])
    answer = head.answer(probabilities, top_k=1)[0]
    # best first; "cat" (0.8) misses its 0.9, "coffee" (0.2) passes its 0.1, so both are listed
    assert [p["label"] for p in answer] == ["cat", "tissue", "flower", "coffee"]
    assert [p["positive"] for p in answer] == [False, True, True, True]
    override = head_for(config, LABELS, threshold={"cat": 0.75})
    assert override.thresholds == (0.75, 0.1, 0.5, 0.5, 0.5, 0.5)
    assert head_for(config, LABELS, threshold=0.25).thresholds == (0.25,) * 6
    assert parse_thresholds("0.3") == 0.3 and parse_thresholds("0.1,0.2") == [0.1, 0.2]
    assert parse_thresholds("cat=0.3, dog=0.6") == {"cat": 0.3, "dog": 0.6}
    with pytest.raises(HeadError, match="not labels"):
        head_for(config, LABELS, threshold={"dog": 0.3})
    with pytest.raises(HeadError, match="label=value"):
        parse_thresholds("high")


def test_config_without_problem_type_gets_softmax_unless_told(
    tmp_path: Path, photo_dir: Path
) -> None:
    # A checkpoint trained multi-label whose config lost problem_type: nothing in the files says
    # so, both libraries apply softmax; problem_type="multi_label" gives the sigmoid scores.
    directory = save_hf_classifier(tmp_path / "no-problem-type", seed=4)
    image = str(photo_dir / "astronaut.jpg")
    softmax = vitkit.load(directory).predict([image], top_k=6)[0]
    assert abs(sum(p["score"] for p in softmax) - 1.0) < 1e-5
    sigmoid = vitkit.load(directory, problem_type="multi_label").predict([image])[0]
    pipe = transformers.pipeline("image-classification", model=str(directory), device="cpu")
    reference = {p["label"]: p["score"] for p in pipe(image, top_k=6, function_to_apply="sigmoid")}
    assert all(abs(p["score"] - reference[p["label"]]) < TOLERANCE for p in sigmoid)


def test_predict_cli_lists_labels_that_pass(
    multilabel_dir: Path, photo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(photo_dir / "coffee.jpg")
    argv = ["predict", "-m", str(multilabel_dir), "-f", "json", image]
    assert main([*argv, "--threshold", "0"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert len(record["predictions"]) == len(LABELS)
    assert all(p["positive"] and p["threshold"] == 0.0 for p in record["predictions"])
    assert main([*argv[:-2], "csv", image, "--threshold", "1"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "input,rank,label,score,threshold,positive,error" and len(rows) == 7
    assert all(row.split(",")[5] == "0" for row in rows[1:])
    assert main([*argv, "--threshold", "cat=2"]) == 1
    err = capsys.readouterr().err
    assert "thresholds are probabilities" in err and "Traceback" not in err
