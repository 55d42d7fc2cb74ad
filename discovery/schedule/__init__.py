"""What runs later: scheduled actions and their runner, the inactivity sweep, marketing retention, deadlines.

The top of the domain: may import ``discovery.intake`` (notices), ``discovery.engine``,
``discovery.bundle`` and ``connectors``.
"""
