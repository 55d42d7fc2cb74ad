"""The domain of dsar, one package per capability.

Arrows between the packages point one way (docs/architecture.md, tests/unit/test_layers.py):

    schedule -> intake -> engine -> bundle -> connectors

- ``engine``: a request's life: settings, the data map, identities, plan, ledger, pipeline.
- ``bundle``: the portability bundle: staging, the ZIP and its page, the archive store, verify.
- ``intake``: where requests come from and how the requester hears back: tickets, tokens, notices.
- ``schedule``: what runs later: scheduled actions, inactivity, marketing retention, deadlines.
"""
