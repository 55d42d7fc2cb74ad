"""Mapping what the systems hold: schema scan, classification, drift, and the record of processing (RoPA).

May import discovery.engine, discovery.bundle, discovery.i18n and connectors.
"""
