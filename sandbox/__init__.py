"""Small stateful simulators of the vendor APIs, for the demo and the integration tests.

They follow ../shared/vendor-apis.md (the vendors' documented behaviour), not our connectors'
code, and are served on 127.0.0.1 only.
"""
