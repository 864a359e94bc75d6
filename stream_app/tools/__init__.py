"""Tools around the runtime: the demo, the benchmark, the embedded broker, replay.

``demo`` (the whole loop on one machine), ``bench`` and ``faust_ceiling`` (the performance
figures), ``broker`` (Tansu, the embedded Kafka-protocol broker), ``replay`` (a dataset as ticks),
``services`` (worker processes for the demo, the benchmark and the tests).

May import: every layer below (``core``, ``kafka``, ``offline``, ``loop``) and the top-level
``settings`` and ``assembly``; never the CLI.
"""
