"""Telling a person something before it happens (the notice before an inactivity erasure).

The notifier is chosen by settings ([schedule] notifier): `outbox` (the embedded default) writes
each notice as an .eml file into a folder for a mail system or a person to pick up; `smtp` sends
it; `webhook` POSTs it as JSON to a mail service. Secrets (SMTP login, webhook token) come from
the environment variables the settings name. Logs carry the notice's reference, never the address.
Notices are written in a language of discovery.i18n (the texts are in its catalogue).
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Protocol

import requests

from discovery.engine.settings import ScheduleSettings
from discovery.i18n.languages import Language


class NotifyError(Exception):
    """The notice could not be sent; the message names the notifier, never the address."""


@dataclass(frozen=True)
class Notice:
    to: str
    subject: str
    body: str
    kind: str  # e.g. inactivity_notice
    ref: str  # a stable reference (hash of kind, subject and due date): the same notice twice has one ref


class Notifier(Protocol):
    def send(self, notice: Notice) -> str:
        """Deliver the notice; returns where it went (a file name, a message id), without the address."""
        ...


def make_notice(kind: str, to: str, subject: str, body: str, due_at: datetime) -> Notice:
    ref = hashlib.sha256(f"{kind}:{to}:{due_at.date().isoformat()}".encode()).hexdigest()[:20]
    return Notice(to=to, subject=subject, body=body, kind=kind, ref=ref)


def inactivity_notice(lang: Language, to: str, controller: str, contact: str, last: datetime | None,
                      due: datetime, months: int) -> Notice:
    """The notice before an inactivity erasure (the privacy policy's promise), in `lang`."""
    _ = lang.gettext
    since = _("since {date}").format(date=lang.date(last)) if last else _("for a long time")
    body = "\n\n".join([
        _("Hello,"),
        lang.ngettext(
            "your account with {controller} has not been used {since}. As our privacy policy says, accounts "
            "inactive for {months} month are deleted with the personal data we hold about you.",
            "your account with {controller} has not been used {since}. As our privacy policy says, accounts "
            "inactive for {months} months are deleted with the personal data we hold about you.", months,
        ).format(controller=controller, since=since, months=lang.number(months)),
        _("Unless you log in before {date}, your account and its data will be erased on that day. Records the law "
          "obliges us to keep (such as invoices, for 5 years under the Bookkeeping Act, bokføringsloven § 13) are "
          "kept, restricted, until it allows erasure.").format(date=lang.date(due)),
        _("Questions: {contact}").format(contact=contact),
        controller,
    ]) + "\n"
    subject = _("Your {controller} account will be deleted on {date}").format(controller=controller,
                                                                             date=lang.date(due))
    return make_notice("inactivity_notice", to, subject, body, due)


class OutboxNotifier:
    """One RFC 5322 file per notice; a second send of the same notice rewrites the same file."""

    def __init__(self, folder: Path, sender: str) -> None:
        self.folder = folder
        self.sender = sender

    def send(self, notice: Notice) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{notice.kind}-{notice.ref}.eml"
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(bytes(_message(notice, self.sender)))
        os.replace(tmp, target)  # a reader never sees half a message
        return target.name


class SmtpNotifier:
    def __init__(self, settings: ScheduleSettings, sender: str, env: Mapping[str, str]) -> None:
        self.settings, self.sender = settings, sender
        self.user = _secret(env, settings.smtp_user_env, "schedule.smtp_user_env")
        self.password = _secret(env, settings.smtp_password_env, "schedule.smtp_password_env")

    def send(self, notice: Notice) -> str:
        msg = _message(notice, self.sender)
        try:
            with smtplib.SMTP(self.settings.smtp_host, self.settings.smtp_port, timeout=30) as smtp:
                if self.settings.smtp_starttls:
                    smtp.starttls()
                if self.user:
                    smtp.login(self.user, self.password or "")
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            raise NotifyError(f"smtp {self.settings.smtp_host}:{self.settings.smtp_port}: {type(exc).__name__}") \
                from None
        return str(msg["Message-ID"])


class WebhookNotifier:
    def __init__(self, settings: ScheduleSettings, sender: str, env: Mapping[str, str]) -> None:
        if not settings.webhook_url:
            raise NotifyError('notifier "webhook" needs schedule.webhook_url')
        self.url, self.sender = settings.webhook_url, sender
        self.token = _secret(env, settings.webhook_token_env, "schedule.webhook_token_env")

    def send(self, notice: Notice) -> str:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        payload = {"kind": notice.kind, "ref": notice.ref, "from": self.sender, "to": notice.to,
                   "subject": notice.subject, "body": notice.body}
        try:
            resp = requests.post(self.url, json=payload, headers={**headers, "Idempotency-Key": notice.ref},
                                 timeout=(5, 30))
        except requests.RequestException as exc:
            raise NotifyError(f"webhook: {type(exc).__name__}") from None
        if resp.status_code >= 300:
            raise NotifyError(f"webhook answered HTTP {resp.status_code}")
        return notice.ref


def make_notifier(settings: ScheduleSettings, default_sender: str, env: Mapping[str, str]) -> Notifier:
    sender = settings.mail_from or default_sender
    if settings.notifier == "smtp":
        return SmtpNotifier(settings, sender, env)
    if settings.notifier == "webhook":
        return WebhookNotifier(settings, sender, env)
    return OutboxNotifier(settings.outbox_path, sender)


def _message(notice: Notice, sender: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, notice.to, notice.subject
    msg["Date"] = format_datetime(datetime.now().astimezone())
    msg["Message-ID"] = make_msgid(idstring=notice.ref, domain=sender.rpartition("@")[2] or None)
    msg["X-Dsar-Notice"] = f"{notice.kind}; ref={notice.ref}"
    msg.set_content(notice.body)
    return msg


def _secret(env: Mapping[str, str], variable: str, setting: str) -> str | None:
    if not variable:
        return None
    value = env.get(variable)
    if not value:
        raise NotifyError(f"environment variable {variable} (setting {setting}) is not set")
    return value
