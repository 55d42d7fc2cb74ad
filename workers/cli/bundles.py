"""`dsar` commands for bundles (registered on workers.cli.common.main): verify, expire, presigned links."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from workers.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_NOT_READY,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    actor_or_user,
    emit,
    errors_to_exit,
    fail,
    load_request,
    main,
    runtime,
)


@main.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify_cmd(ctx: click.Context, file: str, as_json: bool) -> None:
    """Check a bundle against its manifest: every file's SHA-256 and size, nothing missing or added, and the
    manifest's signature when the key is at hand ($DSAR_MANIFEST_KEY, or derived from the secret key) (exit 1 if not).
    """
    from discovery.bundle.verify import verify_bundle

    with errors_to_exit():
        path = Path(file)
        if not path.is_file():
            fail(f"no such file: {file}", EXIT_USAGE)
        result = verify_bundle(path, _manifest_key(ctx))
        signature = "not checked (no key)" if result.signature == "not checked" else result.signature

        def human() -> None:
            if result.ok:
                click.echo(f"{file}: OK, {result.checked} files match the manifest (request {result.request_id}); "
                           f"signature {signature}")
                return
            click.echo(f"{file}: FAILED, {len(result.problems)} problem(s); signature {signature}:")
            for problem in result.problems:
                click.echo(f"  {problem}")

        emit({"file": file, **result.to_dict()}, as_json, human)
        if not result.ok:
            sys.exit(EXIT_FAILED)


def _manifest_key(ctx: click.Context) -> bytes:
    """The signing key as the settings name it; without usable settings, the default variables (may be none)."""
    from discovery.bundle.signing import key_from_environment
    from discovery.engine.settings import ConfigError, load_settings

    try:
        return load_settings(ctx.obj.get("config")).manifest_key
    except ConfigError:
        return key_from_environment()


@main.group("bundles")
def bundles_group() -> None:
    """Bundles in the archive store."""


@bundles_group.command("expire")
@click.option("--actor", help="Who does this, kept in the audit log (default: the OS user).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def expire_cmd(ctx: click.Context, actor: str | None, as_json: bool) -> None:
    """Delete bundles past their expiry (archive.retention_days after completion); audited. Workers do it too."""
    from discovery.engine.bundles import expire_bundles

    with errors_to_exit():
        expired = expire_bundles(runtime(ctx), actor=actor_or_user(actor))
        failed = [e for e in expired if not e.deleted]

        def human() -> None:
            if not expired:
                click.echo("no bundle is due to expire")
            for e in expired:
                outcome = "deleted" if e.deleted else f"NOT deleted: {e.error}"
                click.echo(f"{e.request_id}  expired {e.expired_at[:10]}  {outcome}")

        emit({"expired": [e.to_dict() for e in expired], "failed": len(failed)}, as_json, human)
        if failed:
            sys.exit(EXIT_UNAVAILABLE)


@main.command("link")
@click.argument("request_id")
@click.option("--expires", type=int, help="Seconds the link works (default archive.presign_expiry_seconds; "
                                          "at most 7 days, and never past the bundle's own expiry).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def link_cmd(ctx: click.Context, request_id: str, expires: int | None, as_json: bool) -> None:
    """Print a presigned download link for a request's bundle (S3 archive store only)."""
    from discovery.bundle.archive import (
        MAX_PRESIGN_SECONDS,
        ArchiveError,
        ArchiveUnavailable,
        NotInArchive,
        store_for_uri,
    )
    from discovery.engine.bundles import bundle_unavailable

    with errors_to_exit():
        if expires is not None and not 1 <= expires <= MAX_PRESIGN_SECONDS:
            fail(f"--expires must be 1 to {MAX_PRESIGN_SECONDS} seconds (7 days)", EXIT_USAGE)
        rt = runtime(ctx)
        req, _ = load_request(rt, request_id)
        if rt.settings.archive.store != "s3":
            fail("presigned links need the S3 archive store (archive.store = \"s3\"); use `dsar download`",
                 EXIT_CONFIG)
        now = rt.clock()
        why = bundle_unavailable(req, now)
        if why or not req.bundle_path:
            fail(why or "no bundle", EXIT_NOT_READY)
        seconds = expires or rt.settings.archive.presign_expiry_seconds
        if req.bundle_expires_at is not None:
            seconds = min(seconds, int((req.bundle_expires_at - now).total_seconds()))
        store = store_for_uri(rt.settings, req.bundle_path, rt.env)
        try:
            if not store.exists_uri(req.bundle_path):
                raise NotInArchive(req.bundle_path)
            url = store.presign_uri(req.bundle_path, max(seconds, 1))
            if url is None:
                fail(f"the bundle of request {request_id} is in the local archive folder (made before the store was "
                     "S3); use `dsar download`", EXIT_CONFIG)
        except NotInArchive:
            fail(f"the bundle of request {request_id} is no longer in the archive (expired or removed)",
                 EXIT_NOT_READY)
        except ArchiveError as exc:
            fail(str(exc), EXIT_UNAVAILABLE if isinstance(exc, ArchiveUnavailable) else EXIT_CONFIG)
        emit({"request_id": request_id, "url": url, "expires_in": seconds}, as_json, lambda: click.echo(url))
        if not as_json:
            click.echo(f"the link works for {seconds // 3600} h {seconds % 3600 // 60} min", err=True)
