"""Offline model side (torch): model definitions, dataset loading and training."""
