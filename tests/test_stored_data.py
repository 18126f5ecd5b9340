"""``--data`` as teams store images: the same real digits as a class folder, a ``datasets``
``save_to_disk`` folder, Hub-style Parquet files and WebDataset shards (each written with its
own library) give the same splits and, for a fixed seed, the same trained weights."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vitkit.errors import DatasetError
from vitkit.experiments.demo_data import load_digits_arrays, write_image_folder
from vitkit.training.stored_data import is_multi_label_data, store_kind
from vitkit.training.tasks.multilabel import MultiLabelBuilder
from vitkit.training.trainer import TrainConfig, train

CLASSES = 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, labels, names = load_digits_arrays()
    keep = np.concatenate([np.flatnonzero(labels == c)[:30] for c in range(CLASSES)])
    root = tmp_path_factory.mktemp("stored") / "folder"
    write_image_folder(
        root, images[keep], labels[keep], names[:CLASSES], size=16, test_fraction=0.25
    )
    return root


def rows_of(folder: Path, split: str) -> tuple[list[str], list[Path]]:
    """Class names and image files of a split, in the class folders' order."""
    classes = sorted(p.name for p in (folder / "train").iterdir())
    files = [f for c in classes for f in sorted((folder / split / c).glob("*.png"))]
    return classes, files


def as_datasets(folder: Path) -> Any:
    import datasets

    classes, _ = rows_of(folder, "train")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)}
    )
    parts = {}
    for split in ("train", "test"):
        _, files = rows_of(folder, split)
        rows = {
            "image": [str(f) for f in files],
            "label": [classes.index(f.parent.name) for f in files],
        }
        parts[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(parts)


def write_webdataset(folder: Path, out: Path) -> Path:
    out.mkdir()
    classes, _ = rows_of(folder, "train")
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    for split in ("train", "test"):
        _, files = rows_of(folder, split)
        with tarfile.open(out / f"{split}-000000.tar", "w") as shard:
            for path in files:
                key = f"{path.parent.name}/{path.stem}"
                for extension, data in (
                    ("png", path.read_bytes()),
                    ("cls", str(classes.index(path.parent.name)).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(data)
                    shard.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def stores(folder: Path) -> dict[str, Path]:
    root = folder.parent
    as_datasets(folder).save_to_disk(str(root / "saved"))  # embeds the PNG bytes
    import datasets
    import pyarrow.parquet as pq

    saved = datasets.load_from_disk(str(root / "saved"))
    (root / "parquet" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        target = root / "parquet" / "data" / f"{split}-00000-of-00001.parquet"
        saved[split].to_parquet(str(target))
        assert pq.read_table(target).column("image")[0].as_py()["bytes"]  # as on the Hub
    write_webdataset(folder, root / "shards")
    return {
        "folder": folder,
        "datasets": root / "saved",
        "parquet": root / "parquet",
        "webdataset": root / "shards",
    }


def tiny_run(data: Path, out: Path, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        data=str(data),
        out=str(out),
        from_scratch=True,
        preset="vit-tiny-patch4-16",
        model_overrides={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        epochs=2,
        batch_size=16,
        val_fraction=0.2,
        device="cpu",
        progress=False,
    )
    settings.update(changes)
    return TrainConfig(**settings)


def test_every_store_gives_the_folders_splits_and_weights(stores: dict[str, Path]) -> None:
    assert {kind: store_kind(path) for kind, path in stores.items()} == {
        "folder": None,
        "datasets": "datasets",
        "parquet": "parquet",
        "webdataset": "webdataset",
    }
    results, weights = {}, {}
    for kind, data in stores.items():
        out = data.parent / f"run-{kind}"
        results[kind] = train(tiny_run(data, out))
        weights[kind] = load_file(out / "best" / "model.safetensors")
    reference = results["folder"]
    for kind in ("datasets", "parquet", "webdataset"):
        assert results[kind].labels == reference.labels
        assert results[kind].best_epoch == reference.best_epoch
        # the same images in each split, by the file each came from
        for split in ("train", "val", "test"):
            assert _names(results[kind], split) == _names(reference, split), (kind, split)
        for name, tensor in weights["folder"].items():
            assert torch.equal(weights[kind][name], tensor), (kind, name)
        assert results[kind].test.report == reference.test.report


def _names(result: Any, split: str) -> list[tuple[int, str]]:
    """(class, file stem) of each image of a split, as the run reads it back (split.json)."""
    from vitkit.training.tasks.classify import ClassificationBuilder

    cfg = TrainConfig(**json.loads((result.out / "train_config.json").read_text()))
    samples = getattr(ClassificationBuilder().read_splits(cfg, result.out), split)
    return sorted((s.label, Path(getattr(s, "name", "") or s.path).stem) for s in samples)


def test_list_labels_train_multi_label_and_bad_images_are_skipped(
    tmp_path: Path, folder: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    classes, files = rows_of(folder, "train")
    pictures = [{"bytes": f.read_bytes(), "path": f.name} for f in files]
    pictures[3] = {"bytes": b"not an image", "path": "broken.png"}
    tags = [[f.parent.name] + (["odd"] if int(f.stem) % 2 else []) for f in files]
    table = pa.table({"image": pictures, "labels": tags})
    pq.write_table(table, tmp_path / "tags.parquet")
    data = tmp_path / "tags.parquet"
    assert is_multi_label_data(data)
    cfg = tiny_run(data, tmp_path / "run", epochs=1)
    result = train(cfg, MultiLabelBuilder())
    assert result.labels == sorted({*classes, "odd"})
    report = (tmp_path / "run" / "bad_images.txt").read_text()
    assert "train/3" in report  # the sample id names the bad row
    with pytest.raises(DatasetError, match="holds lists"):
        train(tiny_run(data, tmp_path / "single"))


def test_a_store_without_the_named_column_says_which_columns_it_has(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(
        DatasetError, match=r"no column 'diagnosis' \(columns: image, label\).*--label-column"
    ):
        train(tiny_run(stores["parquet"], tmp_path / "run", label_column="diagnosis"))
