"""What a run learns: the task interface (``base``) and the tasks built on it.

- ``base``: ``TrainingTask`` (owns the model, returns ``{"loss", ...}``), ``TaskBuilder`` (reads
  the data, builds the task), ``ModelSpec``;
- ``classify``: single-label classification from class folders (the default);
- ``vitkit.training.distillation``: a DeiT student taught by a frozen teacher.

Nothing is imported here, so importing one task never imports the others.
"""
