"""``pretrain``: MAE pre-training with the trainer's loop (what ``vitkit pretrain`` runs).

The task, its data and its model are ``vitkit.training.tasks.mae`` (and ``mae_data``,
``mae_spec``, ``mae_config``); this module only runs them, so that the tasks never import the
trainer (the trainer imports the default task: one direction only).
"""

from __future__ import annotations

from collections.abc import Sequence

from vitkit.training.callbacks import Callback
from vitkit.training.config import TrainConfig
from vitkit.training.mae_pictures import ReconstructionPictures
from vitkit.training.tasks.mae import MAEBuilder
from vitkit.training.tasks.mae_config import PretrainConfig, pretrain_recipe
from vitkit.training.trainer import TrainResult, train

__all__ = ["PretrainConfig", "pretrain"]


def pretrain(
    cfg: TrainConfig, settings: PretrainConfig, callbacks: Sequence[Callback] = ()
) -> TrainResult:
    """Pre-train an MAE on every image under ``cfg.data`` (``vitkit.training.tasks.mae``); the
    trainer's loop, with MAE's optimisation filled into ``cfg`` where it left values unset."""
    pictures = ReconstructionPictures(settings.pictures)
    return train(
        pretrain_recipe(cfg, settings), MAEBuilder(settings), callbacks=[*callbacks, pictures]
    )
