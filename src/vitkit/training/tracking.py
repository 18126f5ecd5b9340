"""Experiment tracking: a run's settings, metrics and files in TensorBoard and MLflow.

``--report-to`` (``TrainConfig.report_to``) names the trackers; each is a trainer callback
(``vitkit.training.callbacks``), so every task the trainer runs (classification, multi-label,
distillation, MAE pre-training, and any new one) is tracked alike, as transformers'
``report_to`` callbacks track every ``Trainer`` run. What each tracker receives:

- settings: the run's settings (recipe resolved), the data summary and the model's size, as
  MLflow params / a TensorBoard text entry and HParams record;
- metrics, with the optimiser step as their x-axis: every record of ``metrics.jsonl`` as it is
  written, named ``<record type>/<field>``: ``step/loss``, ``step/lr`` every ``--log-every``
  steps, ``epoch/train_loss``, ``epoch/val_loss``, ``epoch/val_<score>``, ``epoch/lr``,
  ``epoch/seconds`` every epoch; then ``best/epoch``, ``best/val_loss`` and the test split's
  ``test/<score>``;
- files: MLflow gets ``curves.png``, the metrics files, ``train_config.json``, ``test/``
  (metrics, confusion matrix) and the best model directory (artifact path ``model``);
  TensorBoard the confusion matrix as an image.

TensorBoard writes to ``OUT/tensorboard`` (``tensorboard --logdir OUT``, or the folder above
several runs). MLflow writes to ``$MLFLOW_TRACKING_URI`` when set (a tracking server, a database,
a folder), else to MLflow's own default local store in the working folder, the one ``mlflow ui``
opens there (``sqlite:///mlflow.db`` since MLflow 3, ``./mlruns`` before); the run id is kept in ``OUT/tracking.json`` so ``--resume`` continues the same run (TensorBoard drops the
events an interrupted epoch had written past the last committed step). A run in an MLflow run
(``parent_run``) is nested under it: ``vitkit compare`` files its rows so.

The tracking libraries are extras (``pip install 'vitkit[mlflow]'``, ``'vitkit[tensorboard]'``);
``vitkit.training.checks.check_report_to`` says so before any work. MLflow is driven through ``MlflowClient``, never the
fluent API's process-wide active run: a library call must not change global state.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitkit.atomic_files import atomic_write_text
from vitkit.training.callbacks import Callback
from vitkit.training.config import TrainConfig
from vitkit.training.evaluate import EvalResult
from vitkit.training.run import Run
from vitkit.training.state import FitState

DEFAULT_EXPERIMENT = "vitkit"
TRACKING_FILE = "tracking.json"  # OUT/tracking.json: the MLflow run id, for --resume


def reporters(cfg: TrainConfig) -> list[Callback]:
    """The tracking callbacks ``cfg.report_to`` asks for (none for ``none``)."""
    found: list[Callback] = []
    if "tensorboard" in cfg.report_to:
        found.append(TensorBoardReporter())
    if "mlflow" in cfg.report_to:
        found.append(MLflowReporter())
    return found


# ---- what every tracker logs ------------------------------------------------------------------
def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    """One metrics record as tracker metrics: ``<type>/<field>`` for every number in it."""
    skip = {"type", "epoch", "step"}
    return {
        f"{record['type']}/{name}": float(value)
        for name, value in record.items()
        if name not in skip and isinstance(value, int | float) and not isinstance(value, bool)
    }


def run_params(run: Run) -> dict[str, str]:
    """The run's settings (recipe resolved), data summary and model size, as flat strings."""
    params: dict[str, str] = {}
    for name, value in run.cfg.to_dict().items():
        if isinstance(value, dict):
            params.update({f"{name}.{key}": _text(item) for key, item in value.items()})
        else:
            params[name] = _text(value)
    data = run.data
    params["data.classes"] = str(len(data.splits.classes))
    params["data.train_images"] = str(len(data.train))
    params["data.val_images"] = str(len(data.val))
    params["data.test_images"] = str(len(data.test) if data.test is not None else 0)
    params["data.balance"] = data.balance
    params["model.description"] = run.task.description
    params["model.parameters"] = str(sum(p.numel() for p in run.task.model.parameters()))
    return params


def final_metrics(fit: FitState, test: EvalResult | None, run: Run) -> dict[str, float]:
    """What a finished run adds: the best epoch and the test split's scores."""
    metrics: dict[str, float] = {}
    if fit.best_epoch is not None:
        metrics["best/epoch"] = float(fit.best_epoch)
        metrics["best/val_loss"] = float(fit.best_val_loss)
    if test is not None:
        metrics["test/loss"] = float(test.loss)
        scores = run.task.evaluator.scalars(test.report)
        metrics.update({f"test/{name}": float(value) for name, value in scores.items()})
    return metrics


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return "" if value is None else str(value)


def run_name(cfg: TrainConfig) -> str:
    return cfg.run_name or Path(cfg.out).absolute().name


class _Reporter(Callback):
    """Shared bookkeeping: which history records the tracker has already received."""

    def __init__(self) -> None:
        self.sent = 0  # fit.history[:sent] has been logged
        self.active = False

    def on_fit_start(self, run: Run, fit: FitState) -> None:
        if run.info.is_main:
            self.sent = len(fit.history)  # a resumed run's earlier records were logged before
            self.start(run, fit)
            self.active = True

    def on_step_end(self, run: Run, fit: FitState, loss: float, lr: float) -> None:
        self._send_new(fit)

    def on_epoch_end(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        self._send_new(fit)
        if self.active:
            self.flush()

    def on_test_end(self, run: Run, fit: FitState, test: EvalResult | None) -> None:
        if self.active:
            self.finish(run, fit, test)

    def on_run_end(self, run: Run, fit: FitState, error: BaseException | None) -> None:
        if self.active:
            self.active = False
            self.close(error)

    def _send_new(self, fit: FitState) -> None:
        if not self.active:
            return
        for record in fit.history[self.sent :]:
            self.log_metrics(record_metrics(record), int(record["step"]))
        self.sent = len(fit.history)

    # what a tracker implements
    def start(self, run: Run, fit: FitState) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def finish(self, run: Run, fit: FitState, test: EvalResult | None) -> None:
        raise NotImplementedError

    def close(self, error: BaseException | None) -> None:
        raise NotImplementedError


# ---- TensorBoard --------------------------------------------------------------------------
class TensorBoardReporter(_Reporter):
    """Scalars, settings and the confusion matrix in ``OUT/tensorboard`` (torch's SummaryWriter)."""

    def __init__(self) -> None:
        super().__init__()
        self.writer: Any = None
        self.params: dict[str, str] = {}

    def start(self, run: Run, fit: FitState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # On --resume, events past the last committed step (an interrupted epoch's) are dropped.
        purge = fit.step + 1 if fit.step else None
        self.writer = SummaryWriter(str(run.out / "tensorboard"), purge_step=purge)
        self.params = run_params(run)
        if not fit.step:
            table = "\n".join(f"| {k} | {v} |" for k, v in self.params.items())
            self.writer.add_text("settings", "| setting | value |\n|---|---|\n" + table, 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, run: Run, fit: FitState, test: EvalResult | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = final_metrics(fit, test, run)
        self.log_metrics(metrics, fit.step)
        # The HParams dashboard: settings beside the final scores, in this run's own folder.
        for summary in hparams(self.params, metrics):
            self.writer.file_writer.add_summary(summary)
        matrix = run.out / "test" / "confusion_matrix.png"
        if matrix.is_file():
            self.writer.add_image(
                "test/confusion_matrix", _png_pixels(matrix), fit.step, dataformats="HWC"
            )

    def close(self, error: BaseException | None) -> None:
        self.writer.close()


def _png_pixels(path: Path) -> Any:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ---- MLflow -------------------------------------------------------------------------------
def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else MLflow's own default local store (``sqlite:///mlflow.db``
    in the working folder since MLflow 3; ``./mlruns`` before, or where that folder holds runs)."""
    import mlflow

    return str(mlflow.get_tracking_uri())


def experiment_name(experiment: str | None) -> str:
    """``--experiment``, else ``$MLFLOW_EXPERIMENT_NAME``, else ``vitkit``."""
    return experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def mlflow_client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return str(found.experiment_id if found is not None else client.create_experiment(name))


def start_mlflow_run(
    client: Any, experiment: str, name: str, out: Path, parent: str | None = None
) -> str:
    """A new MLflow run, or the one ``out/tracking.json`` names (a resumed run): its id."""
    recorded = _recorded_run(out)
    if recorded is not None:
        client.update_run(recorded, status="RUNNING")
        return recorded
    tags = {"vitkit.out": str(out.absolute())}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    created = client.create_run(experiment_id(client, experiment), run_name=name, tags=tags)
    run_id = str(created.info.run_id)
    atomic_write_text(out / TRACKING_FILE, json.dumps({"mlflow_run_id": run_id}, indent=1) + "\n")
    return run_id


def _recorded_run(out: Path) -> str | None:
    path = out / TRACKING_FILE
    if not path.is_file():
        return None
    try:
        run_id = json.loads(path.read_text()).get("mlflow_run_id")
    except (json.JSONDecodeError, AttributeError):
        return None
    return str(run_id) if run_id else None


class MLflowReporter(_Reporter):
    """Params, metric history and files in an MLflow run (``MlflowClient``, batched)."""

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None
        self.run_id = ""
        self.pending: list[Any] = []

    def start(self, run: Run, fit: FitState) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        self.client = mlflow_client()
        cfg = run.cfg
        self.run_id = start_mlflow_run(
            self.client, experiment_name(cfg.experiment), run_name(cfg), run.out, cfg.parent_run
        )
        logged = self.client.get_run(self.run_id).data.params
        # A resumed run keeps the values it started with (MLflow refuses changed params).
        params = [
            Param(name, value[:MAX_PARAM_VAL_LENGTH])
            for name, value in run_params(run).items()
            if name not in logged
        ]
        for first in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = params[first : first + MAX_PARAMS_TAGS_PER_BATCH]
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(name, value, now, step) for name, value in metrics.items()]

    def flush(self) -> None:
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        pending, self.pending = self.pending, []
        for first in range(0, len(pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=pending[first : first + MAX_METRICS_PER_BATCH]
            )

    def on_step_end(self, run: Run, fit: FitState, loss: float, lr: float) -> None:
        super().on_step_end(run, fit, loss, lr)
        if len(self.pending) >= 100:  # live enough for a long epoch, without a call per step
            self.flush()

    def finish(self, run: Run, fit: FitState, test: EvalResult | None) -> None:
        self.log_metrics(final_metrics(fit, test, run), fit.step)
        self.flush()
        if fit.best_epoch is not None:
            self.client.set_tag(self.run_id, "vitkit.best_epoch", str(fit.best_epoch))
        for name in ("curves.png", "metrics.jsonl", "metrics.csv", "train_config.json"):
            if (run.out / name).is_file():
                self.client.log_artifact(self.run_id, str(run.out / name))
        if (run.out / "test").is_dir():
            self.client.log_artifacts(self.run_id, str(run.out / "test"), "test")
        if (run.out / "best").is_dir():
            self.client.log_artifacts(self.run_id, str(run.out / "best"), "model")

    def close(self, error: BaseException | None) -> None:
        if error is None:
            status = "FINISHED"
        else:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status)


# ---- a group of runs (vitkit compare) -----------------------------------------------------
@dataclass
class RunGroup:
    """The MLflow run that several training runs are nested under (``run_id`` None: no MLflow)."""

    run_id: str | None = None
    client: Any = None

    def log_files(self, paths: list[Path]) -> None:
        """Attach the group's own outputs (a comparison's table) to its run."""
        if self.run_id is None:
            return
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))


@contextmanager
def run_group(
    report_to: list[str], out: Path, name: str, experiment: str | None = None
) -> Iterator[RunGroup]:
    """A parent MLflow run for the training runs started inside (give them ``group.run_id`` as
    their ``parent_run``); its id is kept in ``out/tracking.json`` so a resumed group continues it.

    TensorBoard needs no parent: each run's ``tensorboard/`` folder sits under ``out``, so
    ``tensorboard --logdir out`` shows them side by side.
    """
    if "mlflow" not in report_to:
        yield RunGroup()
        return
    client = mlflow_client()
    out.mkdir(parents=True, exist_ok=True)
    run_id = start_mlflow_run(client, experiment_name(experiment), name, out)
    status = "FAILED"
    try:
        yield RunGroup(run_id, client)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run_id, status)
