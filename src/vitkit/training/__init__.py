"""Training a model on an image folder: data, augmentation, the trainer, metrics, distillation."""
