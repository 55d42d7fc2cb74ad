"""The sample people every simulator and the sample account database are seeded with.

One person (Jane) is present in all six systems under the identifiers below, some of which
only another system can teach (the Matomo visitor id is stored in the account database, the
account id is FreshChat's reference_id); the others are there so tests can show that
nothing of anyone else is exported or erased.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Person:
    key: str
    email: str  # normalised form; systems store variants (case, spaces)
    first_name: str
    last_name: str
    phone: str
    account_id: str  # the account database's users.id, used as FreshChat reference_id
    matomo_visitor_id: str  # random _pk_id visitor id from before login, stored in the account DB


JANE = Person("jane", "jane.doe@example.com", "Jane", "Doe", "+4791234567", "1001", "5f1e3d2c1b0a9988")
JOHN = Person("john", "john.smith@example.com", "John", "Smith", "+4792345678", "1002", "0a1b2c3d4e5f6071")
OLA = Person("ola", "ola.nordmann@example.no", "Ola", "Nordmann", "+4793456789", "1003", "99aa88bb77cc66dd")

PEOPLE = (JANE, JOHN, OLA)
# A different person whose e-mail starts with Jane's: a prefix search would wrongly match it.
DECOY_EMAIL = "jane.doe@example.com.au"
