"""What happens around the fit loop, one concern per callback: logs, curves, progress, the best
model, vetoes.

Hooks, in the order the loop calls them (every process calls them; the ones that write files
or print do so on rank 0 only):

    on_fit_start(run, fit)
    on_epoch_start(run, fit, epoch)                       epoch counts from 0
    on_step_end(run, fit, loss, lr)                       after every optimiser step
    on_validation(run, fit, record, val)                  judges: may veto the epoch as the best
                                                          (record["not_best_because"]); BestModel
                                                          decides record["best"] and saves best/
    on_epoch_end(run, fit, record, val)                   reporters: logs, curves, progress
    on_fit_end(run, fit)                                  also after an error (in a finally)
    on_test_end(run, fit, test)                           after the test pass of best/ (test:
                                                          None without a test split)
    on_run_end(run, fit, error)                           last, always: error is what stopped the
                                                          run, None when it finished

``record`` is the epoch's metrics record, already in ``fit.history``; ``val`` the validation
``EvalResult``. ``last.pt`` is written by the loop after on_epoch_end (it is the commit point of
an epoch), so a callback's changes to ``fit`` survive a crash and a ``--resume``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vitkit.atomic_files import atomic_write_text, write_directory_atomically
from vitkit.training.evaluate import EvalResult
from vitkit.training.model_card import write_model_card
from vitkit.training.plots import plot_curves
from vitkit.training.run import Run
from vitkit.training.state import FitState

BestFilter = Callable[[dict[str, Any]], str | None]  # val report -> reason it may not be best


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, run: Run, fit: FitState) -> None:
        pass

    def on_epoch_start(self, run: Run, fit: FitState, epoch: int) -> None:
        pass

    def on_step_end(self, run: Run, fit: FitState, loss: float, lr: float) -> None:
        pass

    def on_validation(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        pass

    def on_epoch_end(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        pass

    def on_fit_end(self, run: Run, fit: FitState) -> None:
        pass

    def on_test_end(self, run: Run, fit: FitState, test: EvalResult | None) -> None:
        pass

    def on_run_end(self, run: Run, fit: FitState, error: BaseException | None) -> None:
        pass


class CallbackList(Callback):
    """Calls each hook of every callback, in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_fit_start(self, run: Run, fit: FitState) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(run, fit)

    def on_epoch_start(self, run: Run, fit: FitState, epoch: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(run, fit, epoch)

    def on_step_end(self, run: Run, fit: FitState, loss: float, lr: float) -> None:
        for callback in self.callbacks:
            callback.on_step_end(run, fit, loss, lr)

    def on_validation(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        for callback in self.callbacks:
            callback.on_validation(run, fit, record, val)

    def on_epoch_end(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(run, fit, record, val)

    def on_fit_end(self, run: Run, fit: FitState) -> None:
        """Every callback's, even after one raised (logs flushed, bars closed); then the first
        error is raised."""
        errors: list[BaseException] = []
        for callback in self.callbacks:
            try:
                callback.on_fit_end(run, fit)
            except Exception as error:  # raised again below, once the others have run
                errors.append(error)
        if errors:
            raise errors[0]

    def on_test_end(self, run: Run, fit: FitState, test: EvalResult | None) -> None:
        for callback in self.callbacks:
            callback.on_test_end(run, fit, test)

    def on_run_end(self, run: Run, fit: FitState, error: BaseException | None) -> None:
        # every callback gets to close what it opened, even if another one fails to
        failures = []
        for callback in self.callbacks:
            try:
                callback.on_run_end(run, fit, error)
            except Exception as failure:
                failures.append(failure)
        if failures and error is None:
            raise failures[0]


# ---- judges -------------------------------------------------------------------------------
class Veto(Callback):
    """Refuse an epoch as the best model when ``reason(val_report)`` says why (e.g. a collapse)."""

    def __init__(self, reason: BestFilter) -> None:
        self.reason = reason

    def on_validation(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        why = self.reason(val.report)
        if why is not None and "not_best_because" not in record:
            record["not_best_because"] = why


class BestModel(Callback):
    """The epoch with the lowest validation loss, unless vetoed, is saved as ``OUT/best/``, with
    its model card (``README.md``, ``vitkit.training.model_card``)."""

    def on_validation(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        record["best"] = val.loss < fit.best_val_loss and "not_best_because" not in record
        if not record["best"]:
            return
        fit.best_val_loss, fit.best_epoch = val.loss, record["epoch"]
        if run.info.is_main:

            def save_with_card(directory: Path) -> None:
                run.task.save(directory)
                write_model_card(run, fit, directory)

            write_directory_atomically(run.out / "best", save_with_card)

    def on_test_end(self, run: Run, fit: FitState, test: EvalResult | None) -> None:
        """The card again, now with the test results and the pictures beside it."""
        best = run.out / "best"
        if run.info.is_main and best.is_dir():
            write_model_card(run, fit, best, test)


# ---- reporters ----------------------------------------------------------------------------
class StepLog(Callback):
    """A metrics record every ``every`` optimiser steps."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, run: Run, fit: FitState, loss: float, lr: float) -> None:
        if fit.step % self.every == 0:
            record = {"type": "step", "epoch": fit.epoch + 1, "step": fit.step, "loss": loss}
            fit.history.append({**record, "lr": lr})


class MetricsFiles(Callback):
    """metrics.jsonl (every record) and metrics.csv (epoch records), rewritten every epoch.

    Rewriting rather than appending keeps the files equal to an uninterrupted run's after a
    resume (the steps a killed epoch had logged are not repeated).
    """

    def on_epoch_end(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        if run.info.is_main:
            write_logs(run.out, fit.history)


class Curves(Callback):
    """curves.png: loss and validation scores per epoch."""

    def on_epoch_end(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        if run.info.is_main:
            plot_curves([r for r in fit.history if r["type"] == "epoch"], run.out / "curves.png")


class ProgressBar(Callback):
    """rich progress bars on stderr (rank 0), and one summary line per epoch."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None

    def on_fit_start(self, run: Run, fit: FitState) -> None:
        if not run.info.is_main:
            return
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.progress.start()

    def on_epoch_start(self, run: Run, fit: FitState, epoch: int) -> None:
        if self.progress is not None:
            description = f"epoch {epoch + 1}/{run.cfg.epochs}"
            total = run.steps_per_epoch
            self.task = self.progress.add_task(description, total=total, loss=float("nan"), lr=0.0)

    def on_step_end(self, run: Run, fit: FitState, loss: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=loss, lr=lr)

    def on_epoch_end(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        if self.progress is None:
            return
        self.progress.remove_task(self.task)
        veto = record.get("not_best_because")
        mark = " *best*" if record["best"] else (f" (not best: {veto})" if veto else "")
        scores = "  ".join(
            f"{name.replace('_', ' ')} {value:.4f}"
            for name, value in record.items()
            if name.startswith("val_")
            and name not in ("val_loss", "val_macro_precision", "val_macro_recall")
        )
        self.progress.console.print(
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}  val loss "
            f"{record['val_loss']:.4f}  {scores}  ({record['seconds']:.1f}s){mark}"
        )

    def on_fit_end(self, run: Run, fit: FitState) -> None:
        if self.progress is not None:
            self.progress.stop()


def default_callbacks(log_every: int, progress: bool) -> list[Callback]:
    """What every run has, after the caller's own callbacks: best model, logs, curves, progress."""
    callbacks: list[Callback] = [BestModel(), StepLog(log_every), MetricsFiles(), Curves()]
    if progress:
        callbacks.append(ProgressBar())
    return callbacks


# ---- the metrics files --------------------------------------------------------------------
BASE_FIELDS = ("epoch", "step", "lr", "train_loss", "val_loss")


def write_logs(out: Any, records: list[dict[str, Any]]) -> None:
    """metrics.jsonl (every record) and metrics.csv (one row per epoch) from the history."""
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    epochs = [r for r in records if r["type"] == "epoch"]
    scores = [k for k in (epochs[0] if epochs else {}) if k.startswith("val_") and k != "val_loss"]
    table = io.StringIO(newline="")
    fields = [*BASE_FIELDS, *scores, "best", "seconds"]
    writer = csv.DictWriter(table, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(epochs)
    atomic_write_text(out / "metrics.csv", table.getvalue())


def say(message: str) -> None:
    print(message, file=sys.stderr)
