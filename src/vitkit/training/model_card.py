"""The README.md of a trained model directory: a model card in the Hugging Face Hub's format.

A card is YAML metadata between ``---`` lines, then Markdown. The metadata is built with
``huggingface_hub.ModelCardData`` (library, pipeline tag, tags, base model, and the test
results as ``model-index``, which the Hub shows as an evaluation table), so
``huggingface_hub.ModelCard`` reads back exactly what was written. The Markdown says what the
model is (base checkpoint, resolution, head), what it was trained on (classes, images per split
and class, balancing), how (the settings the run resolved), how well (the test split: macro
scores and per class; the validation curve per epoch) and with what (framework versions), then
its intended uses and limitations.

The trainer writes it into ``best/`` with the weights, whatever the task (``BestModel``), and
again after the test pass with the results and the pictures (``curves.png``, the confusion
matrix) beside it. Every number in ``model-index`` is the test report's (``test/metrics.json``)
under the same key (the metric's ``name``).
"""

from __future__ import annotations

import json
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.atomic_files import atomic_write_text
from vitkit.checkpoints.hub import source_kind
from vitkit.training.evaluate import EvalResult
from vitkit.training.run import Run
from vitkit.training.state import FitState

CARD_FILE = "README.md"
PICTURES = ("curves.png",)  # from OUT, copied beside the card; test/confusion_matrix.png too
# report key -> the Hub's metric id (hf.co/metrics) and its arguments
HUB_METRICS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "accuracy": ("accuracy", None),
    "macro_f1": ("f1", {"average": "macro"}),
    "macro_precision": ("precision", {"average": "macro"}),
    "macro_recall": ("recall", {"average": "macro"}),
    "micro_f1": ("f1", {"average": "micro"}),
    "mAP": ("mean_average_precision", {"average": "macro"}),
    "roc_auc": ("roc_auc", {"average": "macro"}),
    "mean_iou": ("mean_iou", None),
    "mean_dice": ("dice", {"average": "macro"}),
    "pixel_accuracy": ("accuracy", None),
    "loss": ("loss", None),
}
# data layouts -> the Hugging Face `datasets` builder that reads the same layout
DATASET_TYPES = {
    "folders": "imagefolder",
    "split.json": "imagefolder",
    "datasets": "arrow",
    "parquet": "parquet",
    "webdataset": "webdataset",
    "tables": "csv",
}
FRAMEWORKS = ("vitkit", "torch", "torchvision", "transformers", "timm", "huggingface_hub")


def write_model_card(
    run: Run, fit: FitState, directory: Path, test: EvalResult | None = None
) -> None:
    """``directory/README.md`` for the model saved there; with ``test``, its pictures too."""

    if test is not None:
        for source in (
            *(run.out / name for name in PICTURES),
            run.out / "test" / "confusion_matrix.png",
        ):
            if source.is_file():
                shutil.copyfile(source, directory / source.name)
    atomic_write_text(directory / CARD_FILE, model_card(run, fit, directory, test))


def model_card(run: Run, fit: FitState, directory: Path, test: EvalResult | None) -> str:
    """The card's text (metadata and Markdown) for the model saved in ``directory``."""
    sections = [
        f"# {_model_name(run)}",
        _description(run, directory),
        _data_section(run),
        _settings_section(run),
        _results_section(run, fit, test),
        _curves_section(fit, directory),
        _usage_section(run, directory),
        _limitations_section(run),
        _versions_section(),
    ]
    body = "\n\n".join(section for section in sections if section)
    return f"---\n{card_metadata(run, directory, test).to_yaml()}\n---\n\n{body}\n"


def card_metadata(run: Run, directory: Path, test: EvalResult | None) -> Any:
    """``huggingface_hub.ModelCardData``: library, task, tags, base model, ``model-index``."""
    from huggingface_hub import EvalResult as HubResult
    from huggingface_hub import ModelCardData

    task = run.task.pipeline_tag
    data_name = Path(run.cfg.data).name or str(run.cfg.data)
    results = []
    for key, value in test_metrics(run, test).items():
        metric_type, arguments = HUB_METRICS.get(key, (key.lower(), None))
        results.append(
            HubResult(
                task_type=task,
                dataset_type=DATASET_TYPES.get(run.data.splits.source, run.data.splits.source),
                dataset_name=data_name,
                dataset_split="test",
                metric_type=metric_type,
                metric_name=key,
                metric_value=value,
                metric_args=arguments,
            )
        )
    base = run.cfg.model if run.cfg.model and source_kind(run.cfg.model) == "hub" else None
    return ModelCardData(
        library_name=library_name(directory),
        pipeline_tag=task,
        tags=["vitkit", task, *_extra_tags(run)],
        base_model=base,
        model_name=_model_name(run),
        eval_results=results or None,
    )


def test_metrics(run: Run, test: EvalResult | None) -> dict[str, float]:
    """The test scores the card reports: the evaluator's headline numbers, then the loss."""
    if test is None:
        return {}
    scores = {k: float(v) for k, v in run.task.evaluator.scalars(test.report).items()}
    return {**scores, "loss": float(test.loss)}


def library_name(directory: Path) -> str:
    """Which library loads the directory as saved: transformers (HF layout) or timm (its Hub
    layout), else vitkit."""
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except json.JSONDecodeError:
        config = {}
    if "architecture" in config:  # timm's layout; a convolutional stem only vitkit builds
        own = config.get("vitkit_config") or {}
        return "vitkit" if own.get("patch_embed", "linear") != "linear" else "timm"
    if config.get("model_type") in ("vit", "deit", "resnet", "dinov2", "vit_mae"):
        return "transformers"
    return "vitkit"


def _model_name(run: Run) -> str:
    return run.cfg.run_name or Path(run.cfg.out).absolute().name


def _extra_tags(run: Run) -> list[str]:
    from vitkit.models.vit import ViT

    tags = ["vision-transformer"] if isinstance(run.task.model, ViT) else []
    if run.cfg.from_scratch:
        tags.append("from-scratch")
    if getattr(run.task.model, "config", None) is not None:
        problem = getattr(run.task.model.config, "problem_type", None)
        if problem == "multi_label_classification":
            tags.append("multi-label")
    return tags


# ---- sections -----------------------------------------------------------------------------
def _description(run: Run, directory: Path) -> str:
    spec, cfg = run.task.spec, run.cfg
    total = sum(p.numel() for p in run.task.model.parameters())
    classes = run.data.splits.classes
    start = f"`{cfg.model}`" if cfg.model and not cfg.from_scratch else "random initialisation"
    files = sorted(p.name for p in directory.iterdir() if p.suffix in (".json", ".safetensors"))
    lines = [
        "## Model description",
        "",
        f"{spec.description}: {total / 1e6:.2f}M parameters, trained with vitkit from {start}.",
        "",
        f"- task: {run.task.pipeline_tag}" + (f", {len(classes)} classes" if classes else ""),
        f"- input: {input_text(run)}",
        f"- format: {library_name(directory)} ({', '.join(files)})",
    ]
    if classes:
        lines.append(f"- labels: {', '.join(classes)}")
    return "\n".join(lines)


def input_text(run: Run) -> str:
    """What the model reads: a task with other inputs than images (bags of tile embeddings)
    says so itself."""
    own = run.task.input_text
    if own:
        return str(own)
    height, width = run.task.spec.image_size
    return f"{height}x{width} RGB images, preprocessed as `preprocessor_config.json` says"


def _data_section(run: Run) -> str:
    data, cfg = run.data, run.cfg
    classes = data.splits.classes
    splits = [("train", data.train.samples), ("validation", data.val.samples)]
    if data.test is not None:
        splits.append(("test", data.test.samples))
    lines = [
        "## Training data",
        "",
        f"`{Path(cfg.data).name or cfg.data}` ({data.splits.source}); "
        f"{', '.join(f'{len(samples)} {name}' for name, samples in splits)} {_unit(run)}.",
    ]
    counts = {name: _label_counts(samples, len(classes)) for name, samples in splits}
    if classes and any(any(column) for column in counts.values()):  # not per-pixel labels
        lines += ["", "| class | " + " | ".join(name for name, _ in splits) + " |"]
        lines.append("|---" * (len(splits) + 1) + "|")
        for index, label in enumerate(classes):
            row = " | ".join(str(counts[name][index]) for name, _ in splits)
            lines.append(f"| {label} | {row} |")
    lines += [
        "",
        f"Class balance: {data.balance} ({len(data.train_indices)} training samples per epoch).",
    ]
    if data.bad:
        lines.append(f"{len(data.bad)} unreadable image(s) were skipped.")
    return "\n".join(lines)


def _unit(run: Run) -> str:
    """What one sample is: an image, or what a task with other inputs reads (bags)."""
    return "samples" if getattr(run.task, "input_text", None) else "images"


def _label_counts(samples: list[Any], num_classes: int) -> list[int]:
    """Images (or bags) per class; multi-label samples (a multi-hot ``label`` or ``target``)
    count once for every label they carry."""
    counts = [0] * num_classes
    for sample in samples:
        label = sample.label
        if isinstance(label, int | np.integer):
            if 0 <= label < num_classes:
                counts[int(label)] += 1
            label = getattr(sample, "target", ())  # a multi-label bag: label -1, target multi-hot
        if len(label) == num_classes:
            for index, value in enumerate(label):
                counts[index] += int(value > 0)
    return counts


SETTINGS_SHOWN = (
    "epochs", "batch_size", "optimizer", "lr", "weight_decay", "warmup_fraction",
    "warmup_steps", "label_smoothing", "augment", "mix", "balance", "image_size",
    "freeze_backbone", "seed",
)  # fmt: skip


def _settings_section(run: Run) -> str:
    settings = run.cfg.to_dict()
    lines = ["## Training procedure", "", "| setting | value |", "|---|---|"]
    for name in SETTINGS_SHOWN:
        value = settings.get(name)
        if value is not None:
            lines.append(f"| {name} | {value} |")
    for name, value in settings.get("model_overrides", {}).items():
        lines.append(f"| model: {name} | {value} |")
    lines.append(f"| processes x micro-batch | {run.info.world_size} x {run.micro_batch} |")
    return "\n".join(lines)


def _results_section(run: Run, fit: FitState, test: EvalResult | None) -> str:
    lines = ["## Evaluation results", ""]
    if fit.best_epoch is not None:
        lines.append(
            f"Best epoch {fit.best_epoch} of {run.cfg.epochs} by validation loss "
            f"({fit.best_val_loss:.4f}); this directory holds that epoch's weights."
        )
    if test is None:
        lines += ["", "No test split was evaluated."]
        return "\n".join(lines)
    lines += ["", f"Test split, {test.report.get('num_samples', len(test.targets))} images:", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in test_metrics(run, test).items()]
    per_class = test.report.get("per_class")
    if isinstance(per_class, dict) and per_class:
        columns = [
            k
            for k, v in next(iter(per_class.values())).items()
            if isinstance(v, int | float) or v is None
        ]
        lines += ["", "Per class:", "", "| class | " + " | ".join(columns) + " |"]
        lines.append("|---" * (len(columns) + 1) + "|")
        for label, row in per_class.items():
            lines.append(f"| {label} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    if (run.out / "test" / "confusion_matrix.png").is_file():
        lines += ["", "![confusion matrix of the test split](confusion_matrix.png)"]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _curves_section(fit: FitState, directory: Path) -> str:
    epochs = [r for r in fit.history if r.get("type") == "epoch"]
    if not epochs:
        return ""
    scores = [k for k in epochs[0] if k.startswith("val_") and k != "val_loss"]
    columns = ["epoch", "train_loss", "val_loss", *scores]
    lines = ["## Training curves", ""]
    if (directory / "curves.png").is_file():
        lines += ["![loss and validation scores per epoch](curves.png)", ""]
    lines += ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for record in epochs:
        mark = " *" if record.get("best") else ""
        cells = [f"{record['epoch']}{mark}", *(_cell(record.get(c)) for c in columns[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "\\* the epoch kept (lowest validation loss so far)."]
    return "\n".join(lines)


def _usage_section(run: Run, directory: Path) -> str:
    lines = ["## How to use", "", "```python", "import vitkit", "", 'model = vitkit.load("PATH")']
    if run.task.pipeline_tag == "image-classification":
        lines.append('print(model.predict("image.jpg"))')
    lines.append("```")
    if (
        library_name(directory) == "transformers"
        and run.task.pipeline_tag == "image-classification"
    ):
        lines += [
            "",
            "or with transformers:",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            'classify = pipeline("image-classification", model="PATH")',
            "```",
        ]
    return "\n".join(lines)


def _limitations_section(run: Run) -> str:
    classes = run.data.splits.classes
    known = f"the {len(classes)} classes it was trained on" if classes else "the images it saw"
    return "\n".join(
        [
            "## Intended uses and limitations",
            "",
            f"Made for images like its training data; it only knows {known} and gives one of "
            "them for any input, in-distribution or not. The scores above hold for the test "
            "split described here; measure it on your own data (scanner, stain, camera, "
            "population) before relying on it, and do not use it alone for medical or other "
            "high-stakes decisions.",
        ]
    )


def _versions_section() -> str:
    lines = ["## Framework versions", "", f"- Python {platform.python_version()}"]
    for package in FRAMEWORKS:
        try:
            lines.append(f"- {package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines)
