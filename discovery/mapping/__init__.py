"""Mapping what the systems hold: schema scan, classification, drift, and the record of processing (RoPA).

May import discovery.engine, discovery.bundle, discovery.i18n and connectors.
"""

# The defaults the CLI shows in `dsar datamap scan/diff --help`, here so that building the CLI (every `dsar`
# command, `dsar serve` too) does not import the scanners (workers/cli/mapping.py imports them in its commands).
SAMPLE_ROWS = 50  # rows sampled per table (discovery.mapping.scan_sql)
THRESHOLD = 0.6  # confidence from which a column counts as personal (discovery.mapping.classify)
