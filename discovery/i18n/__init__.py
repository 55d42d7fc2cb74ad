"""Languages: the gettext catalogues (Babel) and locale formatting of dates, numbers and money.

The bottom of the domain: imports nothing of ``discovery`` or ``connectors`` (only Babel), so the bundle
page, the engine, notices and report-back can all speak the person's language.
"""
