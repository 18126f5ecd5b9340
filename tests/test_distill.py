"""DeiT distillation: losses against hand computation (softmax and per-label sigmoid), the two
heads, HF DeiT parity, collapse."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vitkit.checkpoints.hf_deit import load_student, save_student
from vitkit.models.config import ViTConfig
from vitkit.models.deit import DistilledViT, DistilledViTOutput
from vitkit.models.vit import ViT
from vitkit.training.model_spec import ModelSpec
from vitkit.training.tasks.classify import ClassificationTask
from vitkit.training.tasks.distill import DistillationTask, Renormalize
from vitkit.training.tasks.distill_collapse import collapse_report
from vitkit.training.tasks.distill_losses import (
    distillation_loss,
    hard_distillation_loss,
    multilabel_distillation_loss,
    soft_distillation_loss,
)
from vitkit.training.tasks.multilabel import MultiLabelTask

CLS = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]]
DIST = [[1.0, 1.0, 0.0], [-1.0, 0.5, 2.0]]
TEACHER = [[0.5, 3.0, 0.0], [0.0, 0.0, 1.5]]
TARGETS = [0, 1]


def _log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in row]
    log_total = math.log(sum(math.exp(v) for v in scaled))
    return [v - log_total for v in scaled]


def _hand_ce(rows: list[list[float]], targets: list[int]) -> float:
    return sum(-_log_softmax(r)[t] for r, t in zip(rows, targets, strict=True)) / len(rows)


def _hand_kl(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        log_s, log_t = _log_softmax(s_row, t), _log_softmax(t_row, t)
        total += sum(math.exp(lt) * (lt - ls) for ls, lt in zip(log_s, log_t, strict=True))
    return total / len(student) * t * t


def tiny_config(**overrides: object) -> ViTConfig:
    base: dict[str, object] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        id2label={0: "cat", 1: "coffee", 2: "rocket"},
        layer_norm_eps=1e-12,
    )
    base.update(overrides)
    return ViTConfig(**base)  # type: ignore[arg-type]


def test_hard_and_soft_losses_match_hand_computation() -> None:
    cls, dist, teacher = (torch.tensor(x) for x in (CLS, DIST, TEACHER))
    targets = torch.tensor(TARGETS)
    # teacher arg-max: [1, 2]
    hard = _hand_ce(DIST, [1, 2])
    assert hard_distillation_loss(dist, teacher).item() == pytest.approx(hard, rel=1e-6)
    for temperature in (1.0, 3.0):
        soft = _hand_kl(DIST, TEACHER, temperature)
        got = soft_distillation_loss(dist, teacher, temperature).item()
        assert got == pytest.approx(soft, rel=1e-5)
    base = _hand_ce(CLS, TARGETS)
    got_hard = distillation_loss(cls, dist, targets, teacher, "hard", alpha=0.3).item()
    assert got_hard == pytest.approx(0.7 * base + 0.3 * hard, rel=1e-6)
    got_soft = distillation_loss(cls, dist, targets, teacher, "soft", alpha=0.5, temperature=3.0)
    assert got_soft.item() == pytest.approx(
        0.5 * base + 0.5 * _hand_kl(DIST, TEACHER, 3.0), rel=1e-5
    )
    # alpha 0: the teacher does not matter at all
    other_teacher = torch.tensor([[9.0, 0.0, 0.0], [9.0, 0.0, 0.0]])
    assert distillation_loss(
        cls, dist, targets, other_teacher, "hard", alpha=0.0
    ).item() == pytest.approx(base)


def test_label_term_takes_mixed_soft_labels() -> None:
    """Under --mix the [CLS] head's targets are blends of two one-hot labels."""
    cls, dist, teacher = (torch.tensor(x) for x in (CLS, DIST, TEACHER))
    soft_targets = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.6, 0.4]])
    hand = 0.0
    for row, weights in zip(CLS, soft_targets.tolist(), strict=True):
        hand -= sum(w * lp for w, lp in zip(weights, _log_softmax(row), strict=True))
    hand /= len(CLS)
    got = distillation_loss(cls, dist, soft_targets, teacher, "soft", alpha=0.4, temperature=2.0)
    assert got.item() == pytest.approx(0.6 * hand + 0.4 * _hand_kl(DIST, TEACHER, 2.0), rel=1e-5)
    # one-hot soft labels are the class indices
    one_hot = torch.eye(3)[TARGETS]
    assert distillation_loss(cls, dist, one_hot, teacher, "hard").item() == pytest.approx(
        distillation_loss(cls, dist, torch.tensor(TARGETS), teacher, "hard").item(), rel=1e-6
    )


def test_soft_loss_is_zero_when_student_equals_teacher() -> None:
    logits = torch.tensor(TEACHER)
    assert soft_distillation_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_student_two_heads_and_their_average(astronaut_pixels: torch.Tensor) -> None:
    torch.manual_seed(0)
    student = DistilledViT(tiny_config()).eval()
    assert student.pos_embed.shape == (1, 16 + 2, 32)
    with torch.no_grad():
        output = student(astronaut_pixels)
        tokens, _, _ = student.forward_features(astronaut_pixels)
    assert isinstance(output, DistilledViTOutput)
    expected_cls = tokens[:, 0] @ student.head.weight.T + student.head.bias
    expected_dist = tokens[:, 1] @ student.head_dist.weight.T + student.head_dist.bias
    torch.testing.assert_close(output.cls_logits, expected_cls)
    torch.testing.assert_close(output.dist_logits, expected_dist)
    torch.testing.assert_close(output.logits, (expected_cls + expected_dist) / 2)
    assert not torch.allclose(output.cls_logits, output.dist_logits)  # two distinct heads
    # ViT's own parameter names are untouched; the student adds exactly the DeiT extras
    vit_names = set(dict(ViT(tiny_config()).named_parameters()))
    student_names = set(dict(student.named_parameters()))
    assert student_names - vit_names == {"dist_token", "head_dist.weight", "head_dist.bias"}


@pytest.fixture(scope="module")
def astronaut_pixels() -> torch.Tensor:
    from skimage import data

    image = torch.tensor(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.interpolate(image, size=(32, 32), mode="bilinear", antialias=True)
    return torch.cat([image, image.flip(-1)]) * 2 - 1


def test_student_round_trips_through_transformers_deit(
    tmp_path: Path, astronaut_pixels: torch.Tensor
) -> None:
    import transformers

    torch.manual_seed(1)
    student = DistilledViT(tiny_config()).eval()
    save_student(student, tmp_path / "ours")
    theirs = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(
        tmp_path / "ours"
    ).eval()
    with torch.no_grad():
        ours_out, hf_out = student(astronaut_pixels), theirs(astronaut_pixels)
    torch.testing.assert_close(ours_out.cls_logits, hf_out.cls_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        ours_out.dist_logits, hf_out.distillation_logits, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(ours_out.logits, hf_out.logits, atol=1e-5, rtol=1e-5)
    assert theirs.config.id2label == {0: "cat", 1: "coffee", 2: "rocket"}

    # and the other way: a transformers-initialised DeiT (its own random weights) read by vitkit
    hf_config = transformers.DeiTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        id2label={0: "a", 1: "b"},
        label2id={"a": 0, "b": 1},
    )
    hf_model = transformers.DeiTForImageClassificationWithTeacher(hf_config).eval()
    with torch.no_grad():  # the init zeroes some tensors: randomise so every key is exercised
        for parameter in hf_model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    hf_model.save_pretrained(tmp_path / "theirs")
    loaded, _ = load_student(tmp_path / "theirs")
    with torch.no_grad():
        expected = hf_model(astronaut_pixels)
        got = loaded(astronaut_pixels)
    torch.testing.assert_close(got.cls_logits, expected.cls_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.dist_logits, expected.distillation_logits, atol=1e-5, rtol=1e-5)


def test_from_vit_starts_with_agreeing_heads(astronaut_pixels: torch.Tensor) -> None:
    torch.manual_seed(2)
    vit = ViT(tiny_config()).eval()
    student = DistilledViT.from_vit(vit).eval()
    with torch.no_grad():
        out = student(astronaut_pixels)
    # identical token and position: the two prefix tokens stay identical through every block
    torch.testing.assert_close(out.cls_logits, out.dist_logits)


def _student_spec(model: nn.Module) -> ModelSpec:
    return ModelSpec(
        model=model,
        image_size=(32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        eval_transform=lambda image: torch.zeros(3, 32, 32),
        save=lambda trained, directory: None,
    )


def test_distillation_task_trains_the_student_not_the_teacher(
    astronaut_pixels: torch.Tensor,
) -> None:
    """The task owns student and teacher as submodules: .train() leaves the teacher in eval mode,
    the loss is DeiT's objective on the student's two heads (class weights included), gradients
    reach the student only, and only the student is the model the loop optimises and saves."""
    torch.manual_seed(3)
    teacher = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 32 * 32, 3))
    before = [p.detach().clone() for p in teacher.parameters()]
    model = DistilledViT(tiny_config())
    student = ClassificationTask(_student_spec(model), ["cat", "coffee", "rocket"])
    student.class_weight = torch.tensor([1.0, 2.0, 0.5])
    task = DistillationTask(student, teacher, kind="soft", alpha=0.5, temperature=2.0)
    task.train()
    assert model.training and not teacher.training  # dropout off in the teacher, always
    targets = torch.tensor([0, 1])
    out = task(astronaut_pixels, targets)
    heads = model(astronaut_pixels)
    expected = distillation_loss(
        heads.cls_logits, heads.dist_logits, targets, teacher.eval()(astronaut_pixels), "soft",
        0.5, 2.0, class_weight=torch.tensor([1.0, 2.0, 0.5]),
    )  # fmt: skip
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(out["logits"], heads.logits)
    out["loss"].backward()
    assert model.head_dist.weight.grad is not None and model.head_dist.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for old, new in zip(before, teacher.parameters(), strict=True):
        assert torch.equal(old, new)
    assert task.model is model
    assert {id(p) for p in task.parameters() if p.requires_grad} == {
        id(p) for p in model.parameters()
    }
    plain = DistillationTask(
        ClassificationTask(_student_spec(nn.Flatten()), ["a", "b", "c"]), teacher
    )
    with pytest.raises(TypeError, match="two heads"):
        plain(astronaut_pixels, targets)


def test_one_distillation_task_serves_a_multi_label_student(
    astronaut_pixels: torch.Tensor,
) -> None:
    """The same task with a multi-label student: the student's blend (smoothing) and label
    weights, the teacher's decisions at its own thresholds; the student task saves."""
    torch.manual_seed(4)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    model = DistilledViT(tiny_config())
    saved: list[Path] = []
    spec = _student_spec(model)
    spec.save = lambda trained, directory: saved.append(directory)
    student = MultiLabelTask(spec, ["cat", "coffee", "rocket"], label_smoothing=0.2)
    student.pos_weight = torch.tensor([1.0, 3.0, 2.0])
    thresholds = np.array([0.4, 0.5, 0.6])
    task = DistillationTask(student, teacher, kind="hard", alpha=0.3, teacher_thresholds=thresholds)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    loss = task(astronaut_pixels, targets)["loss"]
    heads = model(astronaut_pixels)
    expected = multilabel_distillation_loss(
        heads.cls_logits, heads.dist_logits, targets * 0.8 + 0.1, teacher(astronaut_pixels),
        "hard", 0.3, 1.0, torch.tensor(thresholds, dtype=torch.float32),
        torch.tensor([1.0, 3.0, 2.0]),
    )  # fmt: skip
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert task.evaluator is student.evaluator
    task.save(Path("best"))
    assert saved == [Path("best")]


def test_renormalize_maps_student_pixels_to_teacher_pixels() -> None:
    raw = torch.rand(2, 3, 4, 4)
    student_mean, student_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    teacher_mean, teacher_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    as_student = (raw - 0.5) / 0.5
    expected = (raw - torch.tensor(teacher_mean).view(1, 3, 1, 1)) / torch.tensor(teacher_std).view(
        1, 3, 1, 1
    )
    got = Renormalize(student_mean, student_std, teacher_mean, teacher_std)(as_student)
    torch.testing.assert_close(got, expected)


def test_collapse_report_flags_never_predicted_classes() -> None:
    labels = ["0", "1", "2"]
    healthy = np.array([[5, 1, 0], [0, 6, 1], [1, 0, 4]])
    assert not collapse_report(healthy, labels).collapsed
    one_class = np.array([[6, 0, 0], [7, 0, 0], [5, 0, 0]])  # predicts "0" for everything
    report = collapse_report(one_class, labels)
    assert report.collapsed and report.never_predicted == ["1", "2"]
    assert "never predicts 1, 2" in report.message()
    assert report.macro_f1 == pytest.approx((2 * (6 / 18) * 1 / (6 / 18 + 1)) / 3)
    all_wrong = np.array([[0, 3], [3, 0]])
    wrong = collapse_report(all_wrong, ["a", "b"])
    assert wrong.collapsed and wrong.never_predicted == [] and wrong.macro_f1 == 0.0


def test_collapse_filter_vetoes_a_collapsed_epoch_loudly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vitkit.training.tasks.distill_collapse import collapse_filter

    veto = collapse_filter(["a", "b"])
    assert veto({"confusion_matrix": [[3, 1], [1, 3]]}) is None
    reason = veto({"confusion_matrix": [[6, 0], [6, 0]]})
    assert reason is not None and "never predicts b" in reason
    assert "WARNING: COLLAPSED on the validation split" in capsys.readouterr().err


def test_a_class_too_rare_on_validation_is_reported_not_vetoed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Unbalanced data: the minority class has 1-2 validation images. Missing them is no collapse
    (it would veto otherwise good epochs); missing a class with 5+ images still is."""
    from vitkit.training.tasks.distill_collapse import MIN_COLLAPSE_SUPPORT, collapse_filter

    labels = ["big", "other", "rare"]
    rare_missed = np.array([[9, 1, 0], [0, 10, 0], [1, 1, 0]])  # 2 "rare" images, never predicted
    report = collapse_report(rare_missed, labels)
    assert not report.collapsed
    assert report.never_predicted == [] and report.rarely_seen == ["rare"]
    assert f"fewer than {MIN_COLLAPSE_SUPPORT} images" in report.rare_message()
    # the same miss with enough support is a collapse
    support = MIN_COLLAPSE_SUPPORT
    common_missed = np.array([[9, 1, 0], [0, 10, 0], [support - 1, 1, 0]])
    assert collapse_report(common_missed, labels).never_predicted == ["rare"]
    assert collapse_report(rare_missed, labels, min_support=1).never_predicted == ["rare"]

    veto = collapse_filter(labels)
    assert veto({"confusion_matrix": rare_missed.tolist()}) is None
    assert veto({"confusion_matrix": rare_missed.tolist()}) is None
    err = capsys.readouterr().err
    assert err.count("never predicts rare") == 1 and "WARNING" not in err  # said once, no veto
    reason = veto({"confusion_matrix": common_missed.tolist()})
    assert reason is not None and "never predicts rare" in reason
    # a model that predicts one class only is still a collapse, whatever the supports
    one_class = np.array([[9, 0, 0], [10, 0, 0], [2, 0, 0]])
    assert veto({"confusion_matrix": one_class.tolist()}) == (
        "COLLAPSED on the validation split: never predicts other"
    )


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def _hand_mean(rows: list[list[float]], targets: list[list[float]]) -> float:
    pairs = [
        (v, t)
        for row, trow in zip(rows, targets, strict=True)
        for v, t in zip(row, trow, strict=True)
    ]
    return sum(_bce(v, t) for v, t in pairs) / len(pairs)


def test_multilabel_losses_match_hand_computation() -> None:
    """One sigmoid per label: BCE on the labels, the teacher's decisions at its own thresholds
    (hard) or its sigmoid at T (soft, T^2-scaled); the soft term differs from the per-label
    Bernoulli KL by the teacher's entropy only."""
    targets = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    thresholds = [0.6, 0.5, 0.7]
    args = [torch.tensor(CLS), torch.tensor(DIST), torch.tensor(targets), torch.tensor(TEACHER)]
    base = _hand_mean(CLS, targets)
    decisions = [
        [float(1 / (1 + math.exp(-v)) >= t) for v, t in zip(row, thresholds, strict=True)]
        for row in TEACHER
    ]
    hard = multilabel_distillation_loss(
        *args, kind="hard", alpha=0.4, teacher_thresholds=torch.tensor(thresholds)
    )
    # sigmoid: [0.62, 0.95, 0.5] and [0.5, 0.5, 0.82]; at 0.5 everywhere row one would be all 1
    assert decisions == [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    assert hard.item() == pytest.approx(0.6 * base + 0.4 * _hand_mean(DIST, decisions), rel=1e-6)
    temperature = 2.0
    soft_teacher = [[1 / (1 + math.exp(-v / temperature)) for v in row] for row in TEACHER]
    scaled = [[v / temperature for v in row] for row in DIST]
    soft = multilabel_distillation_loss(*args, kind="soft", alpha=0.7, temperature=temperature)
    expected = 0.3 * base + 0.7 * temperature**2 * _hand_mean(scaled, soft_teacher)
    assert soft.item() == pytest.approx(expected, rel=1e-6)
    # the soft term is minimal (the teacher's entropy) when the student's logits are the teacher's
    same = [torch.tensor(CLS), torch.tensor(TEACHER), torch.tensor(targets), torch.tensor(TEACHER)]
    entropy = _hand_mean([[v / temperature for v in r] for r in TEACHER], soft_teacher)
    at_teacher = multilabel_distillation_loss(
        *same, kind="soft", alpha=1.0, temperature=temperature
    )
    assert at_teacher.item() == pytest.approx(temperature**2 * entropy, rel=1e-6)
    none = multilabel_distillation_loss(*args, kind="none")
    assert none.item() == pytest.approx((base + _hand_mean(DIST, targets)) / 2, rel=1e-6)
