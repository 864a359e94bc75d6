"""Offline data and evaluation: regular-grid datasets, the field's protocols, baselines, metrics.

``datasets`` and ``dataset_files`` (npz, npy, wide and long CSV, Parquet, HDF5), ``protocols``
(chronological splits), ``evaluation`` (a model and the baselines through the worker's own
forecaster), ``eval_baselines``, ``eval_metrics`` (masked MAE, RMSE, MAPE).

May import: ``core`` only (no Kafka, no asyncio).
"""
