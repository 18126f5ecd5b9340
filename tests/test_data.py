"""Image-folder data: discovery, splits, the bad-image scan, balancing, sampling, augmentation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

from vitkit.experiments.demo_data import build_demo_folder
from vitkit.training import data as vdata
from vitkit.training.augment import RandomRotate90, build_train_transform


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real handwritten digits as PNG class folders; class 8 cut to 10% of its training images."""
    info = build_demo_folder(tmp_path_factory.mktemp("digits") / "data", size=16, minority=8)
    return info.root


def test_demo_folder_is_unbalanced_real_data(digits_root: Path) -> None:
    classes = vdata.find_classes(digits_root / "train")
    assert classes == [str(d) for d in range(10)]
    counts = Counter(s.label for s in vdata.list_samples(digits_root / "train", classes))
    assert counts[8] * 5 < min(counts[c] for c in range(10) if c != 8)
    test_counts = Counter(s.label for s in vdata.list_samples(digits_root / "test", classes))
    assert max(test_counts.values()) - min(test_counts.values()) <= 2  # test stays balanced
    with Image.open(next((digits_root / "train" / "3").iterdir())) as image:
        assert image.size == (16, 16)
        assert np.asarray(image).std() > 20  # real strokes, not a blank image


def test_stratified_split_is_seeded_and_per_class() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 3 + [3] * 1
    train, val = vdata.stratified_split(labels, 0.1, seed=3)
    assert sorted(train + val) == list(range(len(labels)))
    val_counts = Counter(labels[i] for i in val)
    assert val_counts == {0: 5, 1: 3, 2: 1}  # a single-image class stays in train
    assert vdata.stratified_split(labels, 0.1, seed=3) == (train, val)
    assert vdata.stratified_split(labels, 0.1, seed=4)[1] != val


def test_split_json_written_and_reused(digits_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    first = vdata.prepare_splits(digits_root, run, val_fraction=0.2, seed=1)
    assert first.test and first.val and first.source == "split.json"
    saved = json.loads((run / "split.json").read_text())
    assert len(saved["val"]) == len(first.val) and saved["classes"] == first.classes
    # Another seed, same run folder: the recorded split wins (reproducible resume).
    again = vdata.prepare_splits(digits_root, run, val_fraction=0.5, seed=99)
    assert [s.path for s in again.val] == [s.path for s in first.val]
    assert not {s.path for s in first.val} & {s.path for s in first.train}


def test_given_val_folder_is_used_and_foreign_classes_rejected(tmp_path: Path) -> None:
    for split, names in (("train", ["a", "b"]), ("val", ["a", "b"]), ("test", ["a", "c"])):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / name / "x.png")
    with pytest.raises(vdata.DatasetError, match=r"\['c'\]"):
        vdata.prepare_splits(tmp_path, None)
    (tmp_path / "test" / "c" / "x.png").unlink()
    (tmp_path / "test" / "c").rmdir()
    splits = vdata.prepare_splits(tmp_path, None)
    assert splits.source == "folders" and len(splits.val) == 2 and len(splits.test) == 1


def test_empty_or_missing_folder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(vdata.DatasetError, match=str(tmp_path / "nope")):
        vdata.prepare_splits(tmp_path / "nope", None)
    (tmp_path / "cls").mkdir()
    with pytest.raises(vdata.DatasetError, match="no training images"):
        vdata.prepare_splits(tmp_path, None)


def test_scan_reports_every_unreadable_image(digits_root: Path, tmp_path: Path) -> None:
    good = vdata.list_samples(digits_root / "test", vdata.find_classes(digits_root / "test"))[:5]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(good[0].path).read_bytes()[:40])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    samples = [*good, vdata.Sample(str(truncated), 0), vdata.Sample(str(not_image), 1)]
    scan = vdata.scan_images(samples, keep=True)
    assert scan.good == good and scan.images is not None and len(scan.images) == 5
    assert [path for path, _ in scan.bad] == [str(truncated), str(not_image)]
    report = scan.report()
    assert "2 unreadable" in report and "truncated.png" in report and "notes.jpg" in report


def test_oversampling_equalises_classes_evenly() -> None:
    labels = [0] * 20 + [1] * 3 + [2] * 7
    indices = vdata.oversample_indices(labels, seed=0)
    assert Counter(labels[i] for i in indices) == {0: 20, 1: 20, 2: 20}
    repeats = Counter(i for i in indices if labels[i] == 1)
    assert sorted(set(repeats.values())) == [
        6,
        7,
    ]  # 20 = 3 x 6 + 2: no image favoured by more than one
    assert vdata.oversample_indices(labels, seed=0) == indices
    assert vdata.resolve_balance("auto", labels, 3) == "oversample"
    assert vdata.resolve_balance("auto", [0, 1, 0, 1], 2) == "none"


def test_loss_weights_match_sklearn_balanced() -> None:
    labels = np.array([0] * 20 + [1] * 3 + [2] * 7)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(
        vdata.inverse_frequency_weights(labels, 3).numpy(), expected, rtol=1e-6
    )


def test_sampler_ranks_partition_each_global_batch() -> None:
    indices = vdata.oversample_indices([0] * 13 + [1] * 4, seed=0)  # 26 samples
    global_batch, world = 8, 2
    single = list(
        vdata.EpochSampler(indices, shuffle=True, seed=5, global_batch=global_batch, drop_last=True)
    )
    ranks = [
        list(
            vdata.EpochSampler(
                indices,
                shuffle=True,
                seed=5,
                num_replicas=world,
                rank=r,
                global_batch=global_batch,
                drop_last=True,
            )
        )
        for r in range(world)
    ]
    assert len(single) == 24 and all(len(r) == 12 for r in ranks)
    per_rank = global_batch // world
    for step in range(3):
        whole = single[step * global_batch : (step + 1) * global_batch]
        parts = [item for r in ranks for item in r[step * per_rank : (step + 1) * per_rank]]
        assert sorted(whole) == sorted(parts)  # same images and the same augmentation seeds
    sampler = vdata.EpochSampler(indices, shuffle=True, seed=5)
    first = list(sampler)
    sampler.set_epoch(1)
    assert [i for i, _ in first] != [i for i, _ in sampler] and sorted(first) != sorted(sampler)


def test_random_rotate90_follows_albumentations() -> None:
    image = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    seen = Counter()
    torch.manual_seed(0)
    rotate = RandomRotate90(p=1.0)
    for _ in range(400):
        out = rotate(image)
        turns = next(
            k
            for k in range(4)
            if out.shape == torch.rot90(image, k, (-2, -1)).shape
            and torch.equal(out, torch.rot90(image, k, (-2, -1)))
        )
        seen[turns] += 1
    assert set(seen) == {0, 1, 2, 3} and min(seen.values()) > 70  # k uniform in {0,1,2,3}
    never = RandomRotate90(p=0.0)
    assert all(torch.equal(never(image), image) for _ in range(20))


def test_presets_produce_normalised_tensors(digits_root: Path) -> None:
    path = next((digits_root / "train" / "3").iterdir())
    image = Image.open(path).convert("RGB")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    plain = build_train_transform("none", 16, mean, std)(image)
    expected = (
        torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        - torch.tensor(mean)[:, None, None]
    ) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)
    for preset in ("seed", "natural"):
        out = build_train_transform(preset, 24, mean, std)(image)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_train_transform("heavy", 16)


def test_dataset_augmentation_is_a_function_of_the_sample_seed(digits_root: Path) -> None:
    samples = vdata.list_samples(digits_root / "train", vdata.find_classes(digits_root / "train"))[
        :4
    ]
    dataset = vdata.ImageDataset(samples, build_train_transform("seed", 16))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, label = dataset[(2, 1234)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
    assert label == samples[2].label
    assert torch.equal(dataset[(2, 1234)][0], a)
    assert any(not torch.equal(dataset[(2, seed)][0], a) for seed in range(1235, 1245))


def test_seed_preset_is_exactly_the_recipe() -> None:
    pipeline = build_train_transform("seed", 32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    steps = pipeline.transforms
    assert [type(step).__name__ for step in steps] == [
        "ToImage", "RGB", "Resize", "RandomHorizontalFlip", "RandomVerticalFlip",
        "RandomRotate90", "RandomApply", "ToDtype", "Normalize",
    ]  # fmt: skip
    assert steps[2].size == [32, 32]
    assert steps[3].p == steps[4].p == steps[5].p == steps[6].p == 0.5
    (crop,) = steps[6].transforms
    assert type(crop).__name__ == "RandomResizedCrop" and crop.scale == (0.5, 1.0)
    assert list(crop.size) == [32, 32]
    assert steps[8].mean == [0.1, 0.2, 0.3] and steps[8].std == [0.4, 0.5, 0.6]
