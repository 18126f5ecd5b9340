"""What a run learns: the task interface (``base``) and the tasks built on it.

- ``base``: ``TrainingTask`` (owns the model, returns ``{"loss", ...}``), ``TaskBuilder`` (reads
  the data, builds the task); the ``ModelSpec`` they use is ``vitkit.training.model_spec``'s;
- ``classify``: single-label classification from class folders (the default);
- ``multilabel``: several labels per image, from label tables;
- ``mae`` (with ``mae_config``, ``mae_data``, ``mae_spec``): MAE pre-training on unlabeled images;
- ``vitkit.training.distillation``: a DeiT student taught by a frozen teacher.

Tasks never import the trainer (the trainer imports the default task); what runs a task with
the trainer lives beside it (``vitkit.training.pretrain``, ``distillation.distill``).
Nothing is imported here, so importing one task never imports the others.
"""
