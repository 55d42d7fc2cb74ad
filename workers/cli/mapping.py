"""`dsar datamap scan` and `dsar datamap diff`: the live systems against the data map (issue 13).

Output shows categories, confidences, counts and patterns, never a sampled value. Progress goes to stderr.
Exit codes (common.py): 0 done; 1 partial scan, or drift found (diff: anything personal unmapped, a mapped
column dropped, a type that breaks a mask or marker); 3 data-map or settings error; 5 a database unreachable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from discovery.engine.datamap import DataMap, load_data_map
from discovery.engine.settings import load_settings
from discovery.mapping import SAMPLE_ROWS, THRESHOLD
from workers.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_UNAVAILABLE, emit, errors_to_exit, fail, main

# The scanners and their detectors are imported by the commands that scan: every other `dsar` command (`dsar serve`,
# `dsar worker` ...) builds this module's click commands too and never scans.
if TYPE_CHECKING:
    from discovery.mapping.scan_sql import SqlScan, SqlScanner
    from discovery.mapping.scan_vendors import VendorScan


@main.group("datamap")
def datamap_group() -> None:
    """Scan the live systems and compare them with the data map."""


def _data_map(ctx: click.Context) -> DataMap:
    return load_data_map(load_settings(ctx.obj.get("config")).data_map.path)


def _progress(done: int, total: int, table: str) -> None:
    if total >= 20 and (done % 25 == 0 or done == total):
        click.echo(f"  scanned {done}/{total} tables", err=True)


def _url(system: str, url_env: str) -> str:
    url = os.environ.get(url_env)
    if not url:
        fail(f"{system}: environment variable {url_env} is not set (the database URL)", EXIT_CONFIG)
    return url


@datamap_group.command("scan")
@click.argument("system")
@click.option("--url-env", help="Variable holding the database URL (a system not yet in the data map).")
@click.option("--link", "links", multiple=True, metavar="SYSTEM",
              help="Another SQL system to look for references into by value overlap (across databases).")
@click.option("--sample", type=click.IntRange(1, 1000), default=SAMPLE_ROWS, show_default=True,
              help="Rows sampled per table.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=THRESHOLD, show_default=True,
              help="Confidence from which a column counts as personal.")
@click.option("--max-tables", type=click.IntRange(1), default=5000, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the proposed data-map fragment (YAML) here; nothing is written without it.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def scan_cmd(ctx: click.Context, system: str, url_env: str | None, links: tuple[str, ...], sample: int,
             threshold: float, max_tables: int, out: Path | None, as_json: bool) -> None:
    """Classify every column of SYSTEM (SQL), or list a vendor system's custom fields."""
    from discovery.mapping.propose import propose
    from discovery.mapping.scan_sql import SqlScanner, Unreachable, infer_references

    with errors_to_exit():
        data_map = _data_map(ctx)
        entry = data_map.systems.get(system)
        if entry is not None and entry.info.kind != "sql":
            _scan_vendor_cmd(ctx, data_map, system, as_json)
            return
        if entry is None and not url_env:
            fail(f"system '{system}' is not in the data map {data_map.path}; give --url-env for a new database",
                 EXIT_CONFIG)
        env_name = url_env or str(entry.settings.get("url_env", "")) if entry else str(url_env)
        scanners: list[tuple[SqlScanner, SqlScan]] = []
        try:
            for name, var in [(system, env_name)] + [(s, _link_env(data_map, s)) for s in links]:
                click.echo(f"dsar: scanning {name} ...", err=True)
                scanner = SqlScanner(name, _url(name, var), sample=sample, max_tables=max_tables,
                                     threshold=threshold)
                scanners.append((scanner, scanner.scan(_progress)))
            infer_references(scanners)
            scan = scanners[0][1]
            linked = [r for _, s in scanners[1:] for r in s.references if r.to_system == system]
            fragment = propose(scan, env_name, linked=linked)
        except Unreachable as exc:
            fail(str(exc), EXIT_UNAVAILABLE)
        finally:
            for scanner, _ in scanners:
                scanner.close()
        if out is not None:
            out.write_text(fragment, encoding="utf-8")
            click.echo(f"dsar: proposed data-map fragment written to {out}", err=True)
        data = scan.to_dict()
        data["partial"] = scan.partial
        emit(data, as_json, lambda: _human_scan(scan, fragment if out is None else None))
        if scan.partial:
            sys.exit(EXIT_FAILED)


def _link_env(data_map: DataMap, system: str) -> str:
    entry = data_map.systems.get(system)
    if entry is None or entry.info.kind != "sql":
        fail(f"--link {system}: not a SQL system of the data map", EXIT_CONFIG)
    return str(entry.settings.get("url_env", ""))


def _human_scan(scan: SqlScan, fragment: str | None) -> None:
    personal = [(t, c) for t in scan.tables for c in t.personal()]
    click.echo(f"{scan.system} ({scan.dialect}): {len(scan.tables)} tables, "
               f"{sum(len(t.columns) for t in scan.tables)} columns, {len(personal)} personal, {scan.seconds}s"
               + (" (PARTIAL)" if scan.partial else ""))
    for p in scan.problems:
        click.echo(f"  problem: {p}")
    for t, c in personal:
        click.echo(f"  {t.name}.{c.name:<28} {c.category:<13} {c.confidence:.2f}  {'; '.join(c.evidence)}")
    for r in scan.references:
        if r.how != "foreign key":
            where = "" if r.to_system == r.system else f"{r.to_system}."
            click.echo(f"  reference {r.system}.{r.table}.{r.column} -> {where}{r.to_table}.{r.to_column}: "
                       f"{r.how} ({r.evidence})")
    if fragment is not None:
        click.echo("\n" + fragment.rstrip())


def _scan_vendor_cmd(ctx: click.Context, data_map: DataMap, system: str, as_json: bool) -> None:
    from connectors.base import ConnectorContext
    from connectors.registry import build
    from discovery.mapping.scan_vendors import scan_vendor

    settings = load_settings(ctx.obj.get("config"))
    entry = data_map.systems[system]
    connector = build(system, entry.info.kind, entry.settings,
                      ConnectorContext(env=os.environ, redis_url=settings.redis_url, secret_key=settings.secret_key))
    try:
        result = scan_vendor(entry, connector)
    finally:
        connector.close()
    emit(result.to_dict(), as_json, lambda: _human_vendor(result))
    if result.problems:
        sys.exit(EXIT_FAILED)


def _human_vendor(result: VendorScan) -> None:
    click.echo(f"{result.system} ({result.kind}): {len(result.fields)} fields, "
               f"{len(result.uncovered())} personal and not described in the data map")
    for p in result.problems:
        click.echo(f"  problem: {p}")
    for f in result.fields:
        mark = "NOT COVERED" if f.personal and not f.covered else "covered" if f.covered else ""
        click.echo(f"  {f.name:<28} {f.category:<13} {f.confidence:.2f}  {mark}")


@datamap_group.command("diff")
@click.option("--system", "systems", multiple=True, help="Only these SQL systems (default: every enabled one).")
@click.option("--sample", type=click.IntRange(1, 1000), default=SAMPLE_ROWS, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def diff_cmd(ctx: click.Context, systems: tuple[str, ...], sample: int, as_json: bool) -> None:
    """What the live SQL systems hold that the data map does not; exit 1 when anything is found."""
    from discovery.mapping import diff as drift
    from discovery.mapping.scan_sql import SqlScanner, Unreachable

    with errors_to_exit():
        data_map = _data_map(ctx)
        specs = drift.sql_systems(data_map)
        unknown = sorted(set(systems) - set(specs))
        if unknown:
            fail(f"not an enabled SQL system of the data map: {', '.join(unknown)}", EXIT_CONFIG)
        findings: list[drift.Finding] = []
        unreachable: list[str] = []
        partial: list[str] = []
        for name in systems or sorted(specs):
            try:
                with SqlScanner(name, _url(name, specs[name].url_env), sample=sample) as scanner:
                    scan = scanner.scan()
                    findings += drift.diff_scan(specs[name], scan, scanner)
                    partial += [f"{name}: {p}" for p in scan.problems]
            except Unreachable as exc:
                unreachable.append(str(exc))
        data: dict[str, Any] = {"ok": not findings and not unreachable,
                                "findings": [f.to_dict() for f in findings],
                                "unreachable": unreachable, "partial": partial}

        def human() -> None:
            for f in findings:
                click.echo(f.line())
            for p in partial:
                click.echo(f"partial: {p}")
            if not findings:
                click.echo("no drift: every personal column is mapped and every mapped column exists")

        emit(data, as_json, human)
        for line in unreachable:
            click.echo(f"dsar: {line}", err=True)
        if findings:
            sys.exit(EXIT_FAILED)
        if unreachable:
            sys.exit(EXIT_UNAVAILABLE)
