"""The networks: ViT (+ DeiT student), ResNet baseline, their configs and position-embedding maths.

Nothing here knows about files; ``vitkit.checkpoints`` maps foreign weights onto these modules.
"""
