"""stcast runtime: sensor ticks from Kafka in, multi-step forecasts out. Never imports torch.

The layers, each a folder; imports run one way, from the top of this list to the bottom:

- ``cli``, ``cli_offline``: the ``stcast`` command. ``settings``: every ``STCAST_*`` variable,
  read once. ``assembly``: from the settings to a forecaster and a pipeline.
- ``tools/``: the demo, the benchmark, the embedded broker, replay, processes for both.
- ``loop/``: the adaptation loop: retrain worker, history, challenger, registry, online evaluation.
- ``offline/``: datasets and their files, evaluation protocols, baselines and metrics.
- ``kafka/``: the thin asyncio shell: consume, produce, commit, restore, swap; the worker.
- ``core/``: the synchronous core: records, windows, forecasters, scoring, drift, the pipeline.

``tests/test_layers.py`` checks the direction.
"""

__version__ = "0.1.0"
