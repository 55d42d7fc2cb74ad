"""Intake and reporting back: ticket webhooks and signatures, API and download tokens, notices, report-back.

May import ``discovery.engine`` (and through it nothing else), ``discovery.bundle`` and ``connectors``;
never ``discovery.schedule``.
"""
