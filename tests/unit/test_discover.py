"""Discovery rounds: learn identifiers from one system, ask the others again, stop when nothing is new."""

from collections.abc import Iterable, Iterator

from connectors.base import (
    Connector,
    Health,
    Hits,
    Identities,
    Identity,
    IdentityType,
    Receipt,
    Record,
    TransientError,
)

EMAIL, ACCOUNT, VISITOR = IdentityType.EMAIL, IdentityType.ACCOUNT_ID, IdentityType.MATOMO_VISITOR_ID


class Fake(Connector):
    def __init__(self, name: str, accepts: set[IdentityType], teaches: dict[tuple[IdentityType, str], list[Identity]],
                 fail: bool = False) -> None:
        self.name, self._accepts, self.teaches, self.fail = name, accepts, teaches, fail
        self.asked: list[set[tuple[IdentityType, str]]] = []

    def accepts(self) -> set[IdentityType]:
        return self._accepts

    def locate(self, identities: Identities) -> Hits:
        seen = {(i.type, i.value) for i in identities if i.type in self._accepts}
        self.asked.append(seen)
        if self.fail:
            raise TransientError(self.name, "HTTP 503")
        learned = [ident for key in seen for ident in self.teaches.get(key, [])]
        return Hits(self.name, bool(learned) or bool(seen & set(self.teaches)), {"x": len(seen)}, learned)

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        return iter(())

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        return Receipt(self.name, "erase")

    restrict = lift_restriction = erase

    def check(self) -> Health:
        return Health(self.name, True)


def test_identifiers_learned_in_one_system_are_searched_in_the_others() -> None:
    from discovery.engine.discover import discover

    accounts = Fake("accounts", {EMAIL, ACCOUNT}, {
        (EMAIL, "p@x.no"): [Identity(ACCOUNT, "7", "accounts", "accounts: users, column id"),
                            Identity(VISITOR, "abc", "accounts", "accounts: users, column visitor")]})
    analytics = Fake("analytics", {EMAIL, VISITOR}, {
        (VISITOR, "abc"): [Identity(VISITOR, "def", "analytics", "analytics: visit 1")]})
    chat = Fake("chat", {EMAIL, ACCOUNT}, {})
    found = discover({"accounts": accounts, "analytics": analytics, "chat": chat},
                     Identities([Identity(EMAIL, "p@x.no")]))
    assert found.rounds == 2
    assert chat.asked == [{(EMAIL, "p@x.no")}, {(EMAIL, "p@x.no"), (ACCOUNT, "7")}]
    assert analytics.asked[-1] == {(EMAIL, "p@x.no"), (VISITOR, "abc")}
    # What analytics taught about itself ("def") does not send it round again, nor accounts (no new type).
    assert len(analytics.asked) == 2 and len(accounts.asked) == 1
    assert {(i.type, i.value, i.source) for i in found.identities} >= {
        (ACCOUNT, "7", "accounts"), (VISITOR, "abc", "accounts"), (VISITOR, "def", "analytics")}
    assert found.learned_in_round[(VISITOR, "def")] == 2


def test_a_failing_system_is_reported_and_the_others_still_answer() -> None:
    from discovery.engine.discover import discover

    ok = Fake("ok", {EMAIL}, {(EMAIL, "p@x.no"): []})
    down = Fake("down", {EMAIL}, {}, fail=True)
    found = discover({"ok": ok, "down": down}, Identities([Identity(EMAIL, "p@x.no")]), max_rounds=3)
    assert found.errors == {"down": "HTTP 503"} and "ok" in found.hits and "down" not in found.hits


def test_an_identifier_learned_without_provenance_is_refused() -> None:
    """A connector that cannot say where an identifier came from does not get to teach it."""
    from discovery.engine.discover import discover

    accounts = Fake("accounts", {EMAIL, ACCOUNT}, {
        (EMAIL, "p@x.no"): [Identity(ACCOUNT, "7", "accounts", "accounts: users (matched directly), column id"),
                            Identity(EMAIL, "someone.else@x.no", "accounts")]})
    chat = Fake("chat", {EMAIL, ACCOUNT}, {})
    found = discover({"accounts": accounts, "chat": chat}, Identities([Identity(EMAIL, "p@x.no")]))
    assert {(i.type, i.value) for i in found.identities} == {(EMAIL, "p@x.no"), (ACCOUNT, "7")}
    assert found.refused == {"accounts": 1}
    assert all((EMAIL, "someone.else@x.no") not in asked for asked in chat.asked)
    assert next(i for i in found.identities if i.type == ACCOUNT).via.startswith("accounts: users")
