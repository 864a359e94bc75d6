"""The thin asyncio shell around the core: everything that talks to Kafka.

``clients`` (connection options shared by every client), ``topics`` (creation), ``producing``
(per-partition batches), ``serving`` (the consumer-group member: consume, step, produce,
commit), ``restoring`` (state rebuilt from the input topic on reassignment), ``swapping``
(follow ``stcast.models``), ``worker`` (run until a signal).

May import: ``core``, the top-level ``settings`` and ``assembly``, aiokafka; never ``tools`` or
the CLI.
"""
