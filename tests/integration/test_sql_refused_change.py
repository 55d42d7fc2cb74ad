"""A change the database refuses (a foreign key from someone else's row) fails the erasure whole, with one
line that names the system and carries no personal data; nothing is changed. Real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from connectors.base import ConnectorContext, Identities, Identity, IdentityType, PermanentError
from connectors.sql import SqlConnector
from tests.helpers import rows

pytestmark = pytest.mark.integration

EMPLOYEE = "frank.handler@example.no"


def test_a_foreign_key_from_someone_elses_row_fails_the_erasure_cleanly(pg_database: Callable[[], str]) -> None:
    url = pg_database()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE employees (id int PRIMARY KEY, email text, name text)"))
        conn.execute(sa.text("CREATE TABLE service_requests (id int PRIMARY KEY, "
                             "employee_id int REFERENCES employees(id), customer_email text, note text)"))
        conn.execute(sa.text(f"INSERT INTO employees VALUES (1, '{EMPLOYEE}', 'Frank')"))
        conn.execute(sa.text("INSERT INTO service_requests VALUES (10, 1, 'ann@example.no', 'printer')"))
    settings = {"kind": "sql", "url_env": "DB", "entities": {
        # Deleting the employee is what the map says; the customer's service request still points at them.
        "employees": {"table": "employees", "identities": {"email": "email"}, "fields": {"name": "contact"},
                      "erase": {"strategy": "delete"}},
        "service_requests": {"table": "service_requests", "identities": {"email": "customer_email"},
                             "references": {"employee_id": {"to": "employees.id", "owner": False}},
                             "fields": {"note": "support"}, "erase": {"strategy": "delete"}},
    }}
    connector = SqlConnector.from_settings("crm", settings, ConnectorContext(env={"DB": url}, secret_key=b"k" * 32))
    try:
        with pytest.raises(PermanentError) as err:
            connector.erase(Identities([Identity(IdentityType.EMAIL, EMPLOYEE)]))
        message = str(err.value)
        assert err.value.system == "crm" and "refused the change, nothing was changed" in message
        assert "\n" not in message and "frank" not in message.lower() and "ann@" not in message
        assert rows(engine, "SELECT id FROM employees") == [{"id": 1}]  # rolled back
        assert rows(engine, "SELECT id FROM service_requests") == [{"id": 10}]
    finally:
        connector.close()
        engine.dispose()
