"""`make messages`: extract the translatable texts from the source into every language's .po file.

    .venv/bin/python scripts/messages.py            # update discovery/i18n/locales/*/LC_MESSAGES/dsar.po
    .venv/bin/python scripts/messages.py --new sv   # also start a catalogue for a language added to LANGUAGES
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discovery.i18n.messages import update_catalogues


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", action="append", default=[], help="a language code to start a catalogue for")
    args = parser.parse_args()
    for path in update_catalogues(tuple(args.new)):
        print(path)


if __name__ == "__main__":
    main()
