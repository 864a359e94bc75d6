"""stcast runtime: sensor ticks from Kafka in, multi-step forecasts out.

The data's path through the package: ``records`` (parse and validate) -> ``windows`` (per-sensor
rolling windows on a grid) -> ``forecasters`` / ``onnx_forecaster`` (inference) -> ``scoring``
(errors against later actuals) -> ``pipeline`` (the synchronous core that ties them together) ->
``serving`` (the thin asyncio shell: consume, produce, commit) -> ``metrics``.
This package never imports torch.
"""

__version__ = "0.1.0"
