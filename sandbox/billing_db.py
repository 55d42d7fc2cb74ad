"""A sample billing store: customers with VAT numbers, billing addresses, invoices and their lines,
plus each invoice's PDF in S3.

Customers point at the account database's users by `account_id` (sandbox.accounts_db users.id).
Each sample person gets one invoice past the 5-year bookkeeping hold and two inside it, so an
erasure shows both halves: the old invoice (row, lines, PDF) erased, the recent ones restricted.
The object keys follow the billing system's `files.key` template in the data map.

    engine = sa.create_engine(url); create(engine, drop=True); seed(engine)
    upload_invoices(s3_client, bucket, engine)      # {key: pdf bytes}
    enable_billing(datamap_path, bucket=..., endpoint_url=..., access_key_env=..., secret_key_env=...)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from sandbox.people import DECOY_EMAIL, PEOPLE

PROJECT_DATAMAP = Path(__file__).resolve().parent.parent / "config" / "datamap.yaml"
SYSTEM = "billing"
INVOICE_AGES_DAYS = (6 * 365, 400, 30)  # one past the 5-year hold, two inside it

metadata = sa.MetaData()

customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("account_id", sa.Integer, index=True),  # the account database's users.id
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("first_name", sa.String(100)),
    sa.Column("last_name", sa.String(100)),
    sa.Column("company", sa.String(200)),
    sa.Column("vat_number", sa.String(32)),
    sa.Column("country", sa.String(2)),
    sa.Column("phone", sa.String(40), index=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("processing_restricted", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_customers_email_norm", sa.func.lower(sa.func.trim(sa.text("email")))),
)

billing_addresses = sa.Table(
    "billing_addresses", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False, index=True),
    sa.Column("street", sa.String(200), nullable=False),
    sa.Column("postcode", sa.String(16), nullable=False),
    sa.Column("city", sa.String(100), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
)

invoices = sa.Table(
    "invoices", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False, index=True),
    sa.Column("number", sa.String(32), nullable=False, unique=True),
    sa.Column("invoice_date", sa.Date, nullable=False),
    sa.Column("due_date", sa.Date, nullable=False),
    # What the invoice says, as issued: kept with the invoice for the Bookkeeping Act.
    sa.Column("billed_name", sa.String(200), nullable=False),
    sa.Column("billed_address", sa.String(400), nullable=False),
    sa.Column("vat_number", sa.String(32)),
    sa.Column("total", sa.Numeric(12, 2), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("processing_restricted", sa.Boolean, nullable=False, default=False),
)

invoice_lines = sa.Table(
    "invoice_lines", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("invoice_id", sa.Integer, sa.ForeignKey("invoices.id"), nullable=False, index=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
    sa.Column("amount", sa.Numeric(12, 2), nullable=False),
    sa.Column("processing_restricted", sa.Boolean, nullable=False, default=False),
)

STORED_EMAIL = {"jane": "JANE.DOE@example.com ", "john": "john.smith@example.com", "ola": "ola.nordmann@EXAMPLE.no"}
DECOY_CUSTOMER_ID = 99


def create(engine: sa.Engine, drop: bool = False) -> None:
    if drop:
        metadata.drop_all(engine)
    metadata.create_all(engine)


def seed(engine: sa.Engine, now: datetime | None = None) -> dict[str, int]:
    """Seed a customer per sample person (and the decoy); returns how many rows each table got."""
    now = now or datetime.now(UTC)
    today = now.date()
    with engine.begin() as conn:
        invoice_id, line_id = 1, 1
        people: list[tuple[int, str, int, str, str, str, str | None]] = [
            (n + 1, p.key, int(p.account_id), STORED_EMAIL[p.key], p.first_name, p.last_name, p.phone)
            for n, p in enumerate(PEOPLE)]
        people.append((DECOY_CUSTOMER_ID, "decoy", 2001, DECOY_EMAIL, "Decoy", "Person", None))
        for customer_id, key, account_id, email, first, last, phone in people:
            company = f"{last} Consulting AS" if customer_id % 2 else None
            vat = f"NO{912345670 + customer_id}MVA" if company else None
            conn.execute(customers.insert().values(
                id=customer_id, account_id=account_id, email=email, first_name=first, last_name=last,
                company=company, vat_number=vat, country="NO", phone=phone,
                created_at=(now - timedelta(days=7 * 365)).replace(tzinfo=None), processing_restricted=False))
            address = f"{key.title()}veien {customer_id}", f"{150 + customer_id:04d}", "Oslo"
            conn.execute(billing_addresses.insert().values(
                id=customer_id, customer_id=customer_id, street=address[0], postcode=address[1], city=address[2],
                country="NO"))
            ages = INVOICE_AGES_DAYS if key != "decoy" else (30,)
            for age in ages:
                issued = today - timedelta(days=age)
                conn.execute(invoices.insert().values(
                    id=invoice_id, customer_id=customer_id, number=f"INV-{issued.year}-{invoice_id:05d}",
                    invoice_date=issued, due_date=issued + timedelta(days=14),
                    billed_name=f"{first} {last}" + (f", {company}" if company else ""),
                    billed_address=", ".join(address) + ", Norway", vat_number=vat, total=Decimal("148.75"),
                    currency="EUR", processing_restricted=False))
                for description, qty, price in (("VPS green-2 (12 months)", 1, "109.00"), ("Backup add-on", 1,
                                                                                              "10.00")):
                    conn.execute(invoice_lines.insert().values(
                        id=line_id, invoice_id=invoice_id, description=description, quantity=qty,
                        unit_price=Decimal(price), amount=Decimal(price) * qty, processing_restricted=False))
                    line_id += 1
                invoice_id += 1
    return {"customers": len(people), "billing_addresses": len(people), "invoices": invoice_id - 1,
            "invoice_lines": line_id - 1}


def key_template(datamap: Path = PROJECT_DATAMAP) -> str:
    """The invoice key template of the data map's billing system (so the sample files sit where dsar looks),
    e.g. `invoices/{customer_id}/{number}.pdf`."""
    raw = yaml.safe_load(datamap.read_text(encoding="utf-8"))
    return str(raw["systems"][SYSTEM]["entities"]["invoices"]["files"]["key"])


def upload_invoices(s3: Any, bucket: str, engine: sa.Engine, template: str | None = None) -> dict[str, bytes]:
    """Put every invoice's PDF into the bucket under the data map's key template; returns {key: bytes}.

    The key is filled here with a plain str.format over the row, not with connectors.s3_files.KeyTemplate:
    the sample store must not share a mistake with the connector that looks for its files."""
    template = template or key_template()
    uploaded: dict[str, bytes] = {}
    with engine.connect() as conn:
        for row in conn.execute(sa.select(invoices)):
            values = dict(row._mapping)
            key = template.format(**{column: str(value) for column, value in values.items()})
            body = invoice_pdf(values["number"], values["invoice_date"], values["billed_name"],
                               values["billed_address"], values["total"], values["currency"])
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/pdf")
            uploaded[key] = body
    return uploaded


def enable_billing(datamap: Path, *, bucket: str, endpoint_url: str = "", region: str = "us-east-1",
                   access_key_env: str = "", secret_key_env: str = "", target: Path | None = None,
                   extra: Mapping[str, Any] | None = None) -> Path:
    """Write a copy of `datamap` (or rewrite it) with the billing system enabled and pointed at this S3 server."""
    raw = yaml.safe_load(datamap.read_text(encoding="utf-8"))
    system = raw["systems"][SYSTEM]
    system["enabled"] = True
    system["s3"] = {"bucket": bucket, "endpoint_url": endpoint_url, "region": region,
                    "access_key_env": access_key_env, "secret_key_env": secret_key_env}
    system.update(extra or {})
    out = target or datamap
    out.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")
    return out


def invoice_pdf(number: str, issued: date, name: str, address: str, total: Decimal, currency: str) -> bytes:
    """A small, valid one-page PDF (byte offsets in the xref table are exact)."""
    lines = [f"Example Green Cloud AS - Invoice {number}", f"Date: {issued.isoformat()}", f"Billed to: {name}",
             address, f"Total: {total} {currency}"]
    text = "BT /F1 12 Tf 56 780 Td 16 TL " + " ".join(f"({_pdf_escape(line)}) Tj T*" for line in lines) + " ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(text.encode("latin-1")) + text.encode("latin-1") + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _pdf_escape(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1").replace("\\", "\\\\").replace("(", "\\(") \
        .replace(")", "\\)")
