"""stcast runtime: sensor ticks from Kafka in, multi-step forecasts out.

The data's path through the package: ``records`` (parse and validate) -> ``sensors`` /
``windows`` (per-sensor state, rolling windows on a grid) -> ``forecasters`` /
``onnx_forecaster`` (inference) -> ``scoring`` (errors against later actuals) -> ``drift`` /
``retrain_events`` (drift monitors on those errors, debounced retrain events) -> ``pipeline``
and ``chunks`` (the synchronous core that ties them together) -> ``serving`` / ``restoring``
(the thin asyncio shell: consume, produce, commit; state rebuilt on reassignment) ->
``metrics``. Offline: ``datasets``, ``protocols`` and ``evaluation``. Never imports torch.
"""

__version__ = "0.1.0"
