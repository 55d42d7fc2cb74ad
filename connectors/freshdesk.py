"""Freshdesk API v2 client: dsar writes the outcome of a ticket's request back as a private note.

Not a data connector (dsar does not search Freshdesk for people): the helpdesk is where requests
come from. Auth is HTTP basic with the API key as user name and any password ("X").
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from connectors.base import PermanentError
from connectors.http import HttpClient, RetryPolicy

log = structlog.get_logger(__name__)


def base_url(domain: str) -> str:
    """`acme.freshdesk.com` -> https://acme.freshdesk.com/api/v2; a full URL is kept (simulators, proxies)."""
    domain = domain.strip().rstrip("/")
    if not domain:
        raise PermanentError("freshdesk", "api.freshdesk_domain is not set")
    if not domain.startswith(("http://", "https://")):
        domain = f"https://{domain}"
    return domain if domain.endswith("/api/v2") else f"{domain}/api/v2"


class FreshdeskClient:
    def __init__(self, domain: str, api_key: str, *, http: HttpClient | None = None,
                 retry: RetryPolicy | None = None) -> None:
        if not api_key:
            raise PermanentError("freshdesk", "no Freshdesk API key (set the variable api.freshdesk_api_key_env names)")
        self.http = http or HttpClient("freshdesk", base_url(domain), auth=(api_key, "X"), timeout=(5.0, 20.0),
                                       retry=retry or RetryPolicy(attempts=4))

    @classmethod
    def from_settings(cls, domain: str, api_key_env: str, env: Mapping[str, str]) -> FreshdeskClient:
        return cls(domain, env.get(api_key_env, ""))

    def add_note(self, ticket_id: str, body_html: str, *, private: bool = True) -> int | None:
        """POST /tickets/{id}/notes; returns the note id Freshdesk gives."""
        if not ticket_id.isdigit():
            raise PermanentError("freshdesk", "a Freshdesk ticket id is a number")
        data = self.http.json("POST", f"tickets/{ticket_id}/notes", json={"body": body_html, "private": private},
                              ok=(200, 201))
        note_id = data.get("id") if isinstance(data, dict) else None
        log.info("freshdesk.note_added", ticket=ticket_id, note_id=note_id)
        return int(note_id) if isinstance(note_id, int) else None

    def close(self) -> None:
        self.http.close()
