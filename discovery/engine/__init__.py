"""The request engine: settings, the data map, discovery of identities, the plan, the ledger and the pipeline.

May import ``discovery.bundle`` and ``connectors``; never ``discovery.intake`` or ``discovery.schedule``
(they sit above it and call in).
"""
