"""`dsar ropa` (registered on workers.cli.common.main): the record of processing activities (Art. 30(1))."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from workers.cli.common import EXIT_USAGE, errors_to_exit, fail, main


@main.command("ropa")
@click.option("--format", "fmt", type=click.Choice(["html", "csv", "json", "md"]), default=None,
              help="html (one printable page), csv (one row per processing activity), json or md. "
                   "Default: from -o's suffix, else json with --json, else html.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (replaced atomically).")
@click.option("--language", help="en or nb (default: requests.language in the settings).")
@click.option("--json", "as_json", is_flag=True, help="The record as JSON on stdout (same as --format json).")
@click.pass_context
def ropa_cmd(ctx: click.Context, fmt: str | None, output: str | None, language: str | None, as_json: bool) -> None:
    """Write the record of processing activities (GDPR Art. 30(1)) from the data map: controller and DPO,
    purposes, categories of data subjects and personal data, recipients, transfers and their safeguards,
    time limits for erasure and security measures. Reads only the settings and the data map."""
    from discovery.engine.datamap import load_data_map
    from discovery.engine.settings import load_settings
    from discovery.i18n.languages import UnknownLanguage, language_code
    from discovery.mapping.ropa import FORMATS, build_record, render

    with errors_to_exit():
        if as_json and fmt not in (None, "json"):
            fail(f"--json writes JSON; it cannot be combined with --format {fmt}", EXIT_USAGE)
        if fmt is None:
            suffix = Path(output).suffix.lstrip(".").lower() if output else ""
            fmt = "json" if as_json else {"htm": "html", "markdown": "md"}.get(suffix, suffix)
            fmt = fmt if fmt in FORMATS else "html"
        settings = load_settings(ctx.obj.get("config"))
        try:
            code = language_code(language) if language else settings.requests.language
        except UnknownLanguage as exc:
            fail(str(exc), EXIT_USAGE)
        data_map = load_data_map(settings.data_map.path)
        data = render(build_record(data_map, code, datetime.now(UTC)), fmt)
        if not output:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return
        # like `dsar download`: a temporary file beside the target, renamed over it once complete
        target = Path(output)
        tmp = target.with_name(f".{target.name}.part")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_USAGE)
        click.echo(f"wrote {target} ({fmt}, {len(data)} bytes)", err=True)
