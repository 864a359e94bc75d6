"""Offline model side (torch): samples, the global LSTM, presets, training and checkpoints.

``models.training.train`` is the entry point: dataset and protocol in, ``checkpoint.pt``,
``model.onnx`` and ``card.json`` out. The runtime (``stream_app``) never imports this package.
"""
