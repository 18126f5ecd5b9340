"""What a run learns: the tasks, each a ``vitkit.training.task.TrainingTask`` (an ``nn.Module``
that owns its model and returns ``{"loss", ...}``) made by a
``vitkit.training.task_builder.TaskBuilder``; ``vitkit.training.task`` says how to add one.

- ``classify``: single-label classification from class folders (the default);
- ``multilabel``: several labels per image, from label tables;
- ``distill`` (with ``distill_losses``, ``distill_student``, ``distill_collapse``): a DeiT
  student taught by a frozen teacher, on class folders or label tables;
- ``mae`` (with ``mae_config``, ``mae_data``, ``mae_spec``, ``mae_pictures``): MAE
  pre-training on unlabeled images.

Each runs with ``vitkit.training.trainer.train(cfg, builder)``; tasks never import the trainer
(it imports the default task). Nothing is imported here, so importing one task never imports
the others.
"""
