"""Experiments built from training runs: the comparison table and the demo data."""
