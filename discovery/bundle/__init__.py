"""The portability bundle: staged exports, the ZIP with its manifest and page, the archive store, verify.

Sits below the engine (the merge builds a bundle, the runtime opens the store): may import only
``connectors`` and itself, so it knows nothing of requests, the ledger or the data map.
"""
