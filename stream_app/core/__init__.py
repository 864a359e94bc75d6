"""The synchronous core: what happens to a tick, with no I/O, no asyncio and no Kafka client.

A tick's path: ``records`` (parse and validate; the error policy) -> ``sensors`` and ``windows``
(per-sensor rolling context on a grid) -> ``forecasters``, ``card`` and ``onnx_forecaster``
(inference) -> ``scoring`` (errors against later actuals) -> ``drift``, ``feedback`` and
``retrain_events`` (monitors on those errors, corrections, debounced retrain events) ->
``chunks`` and ``pipeline`` (``Pipeline.step`` ties them together) -> ``metrics`` (declared
together, on an injected registry).

May import: the standard library, numpy, onnxruntime, river, prometheus_client, and ``core``
itself; nothing else of ``stream_app``.
"""
