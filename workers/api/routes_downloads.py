"""Download routes: a signed link to a request's bundle, and the bundle itself (streamed or redirected)."""

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import RedirectResponse, StreamingResponse

from discovery.bundle.archive import ArchiveUnavailable, NotInArchive, archive_store
from discovery.engine import pipeline
from discovery.engine.bundles import bundle_unavailable
from discovery.engine.ledger import Request as LedgerRequest
from discovery.engine.runtime import Runtime
from discovery.intake import download_tokens
from workers.api.deps import RT, Creds, Download, authenticate
from workers.api.errors import fail
from workers.api.schemas import ERRORS, DownloadLink
from workers.api.views import load_request

_PRESIGN_SECONDS = 300  # the redirect is followed at once; a short link leaks little

router = APIRouter()


def _ready_bundle(rt: Runtime, req: LedgerRequest) -> str:
    why = bundle_unavailable(req, rt.clock())
    if why:
        fail(410 if req.bundle_path else 409, "gone" if req.bundle_path else "not_ready", why)
    assert req.bundle_path
    return req.bundle_path


@router.post("/v1/requests/{request_id}/download-link", response_model=DownloadLink, tags=["downloads"],
             responses=ERRORS)
def download_link(request_id: str, rt: RT, _who: Download) -> dict[str, Any]:
    """A signed, expiring link to the bundle that the person can open without an API token, at api.public_url
    (503 `no_public_url` while it is unset)."""
    if why := download_tokens.links_refused(rt.settings):  # before anything else: no link for anyone
        fail(503, "no_public_url", why)
    req, _ = load_request(rt, request_id)
    _ready_bundle(rt, req)
    url, expires_at = download_tokens.download_link(rt.settings, request_id, rt.clock())
    return {"url": url, "expires_at": expires_at}


@router.get("/v1/requests/{request_id}/bundle", tags=["downloads"], response_model=None,
            responses={200: {"content": {"application/zip": {}}, "description": "the bundle (ZIP)"},
                       307: {"description": "redirect to a short-lived presigned link"}, **ERRORS})
def bundle(request_id: str, rt: RT, creds: Creds,
           token: Annotated[str | None, Query(max_length=512, description="a download token")] = None,
           ) -> StreamingResponse | RedirectResponse:
    """The bundle, with an API token (download scope) or a download token made for the person."""
    if token:
        try:
            grant = download_tokens.read_token(rt.settings.secret_key, token, rt.clock())
        except download_tokens.DownloadTokenError as exc:
            fail(401, exc.code, str(exc))
        if grant.request_id != request_id:
            fail(403, "forbidden", "this download token is for another request")
        actor = "download-token"
    else:
        actor = f"api:{authenticate(rt, creds, 'download').name}"
    req, _ = load_request(rt, request_id)
    uri = _ready_bundle(rt, req)
    store = archive_store(rt.settings, rt.env)
    stream = None
    try:
        link = store.presign_uri(uri, _PRESIGN_SECONDS) if rt.settings.api.download_redirect else None
        if not link:
            stream = store.open_uri(uri)
    except NotInArchive:
        fail(410, "gone", f"the bundle of request {request_id} is no longer in the archive")
    except ArchiveUnavailable:
        fail(503, "unavailable", "the archive store is unreachable; retry later")
    with rt.sessions.begin() as s:
        pipeline.audit(s, "bundle.downloaded", actor, s.get(LedgerRequest, request_id), redirect=bool(link))
    if link:
        return RedirectResponse(link, status_code=307)
    headers = {"Content-Disposition": f'attachment; filename="dsar-{request_id}.zip"'}
    if req.bundle_size:
        headers["Content-Length"] = str(req.bundle_size)
    return StreamingResponse(_chunks(stream), media_type="application/zip", headers=headers)


def _chunks(stream: Any, size: int = 1 << 16) -> Iterator[bytes]:
    try:
        while chunk := stream.read(size):
            yield chunk
    finally:
        stream.close()
