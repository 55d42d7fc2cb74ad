from connectors.base import EntityPolicy, Hold
from discovery.engine.planner import SystemView, plan, refusals, tasks_of

HOLD = Hold(years=5, from_field="ordered_at", reason="Bookkeeping Act")
POLICIES = {
    "users": EntityPolicy(erase="mask email (hash)", restrict="set processing_restricted=True"),
    "orders": EntityPolicy(erase="delete rows", restrict="set processing_restricted=True", hold=HOLD),
    "login_log": EntityPolicy(erase="delete rows", restrict=None, provided_by_subject=False),
}


def test_hold_turns_erasure_into_restriction_of_held_records() -> None:
    steps = plan("erasure", [SystemView("accounts", True, POLICIES)])
    orders = [(s.action, s.task) for s in steps if s.entity == "orders"]
    assert orders == [("restrict", "erase"), ("erase", "erase")]
    restrict = next(s for s in steps if s.entity == "orders" and s.action == "restrict")
    assert "Bookkeeping Act" in restrict.reason and "5 years" in restrict.reason
    assert [s.action for s in steps if s.entity == "users"] == ["erase"]
    assert tasks_of(steps) == {("accounts", "erase"): ["users", "orders", "login_log"]}


def test_access_exports_everything_portability_only_what_the_person_provided() -> None:
    access = plan("access", [SystemView("accounts", True, POLICIES)])
    assert {s.entity for s in access if s.action == "export"} == {"users", "orders", "login_log"}
    port = plan("portability", [SystemView("accounts", True, POLICIES)])
    assert {s.entity for s in port if s.action == "export"} == {"users", "orders"}
    assert next(s for s in port if s.entity == "login_log").action == "skip"


def test_restriction_skips_entities_without_a_mapped_restriction() -> None:
    steps = plan("restriction", [SystemView("accounts", True, POLICIES)])
    assert {s.entity: s.action for s in steps} == {"users": "restrict", "orders": "restrict", "login_log": "skip"}
    lift = plan("lift_restriction", [SystemView("accounts", True, POLICIES)])
    assert tasks_of(lift) == {("accounts", "lift_restriction"): ["users", "orders"]}


def test_systems_where_the_person_is_absent_are_skipped_and_unknown_ones_still_acted_on() -> None:
    steps = plan("erasure", [SystemView("crm", False, {"contact": EntityPolicy()}),
                             SystemView("chat", None, {"user": EntityPolicy()}, locate_error="HTTP 503")])
    assert [(s.system, s.action) for s in steps] == [("crm", "skip"), ("chat", "erase")]
    assert "locate failed (HTTP 503)" in steps[1].reason
    assert tasks_of(steps) == {("chat", "erase"): ["user"]}


def test_a_change_that_would_touch_another_persons_records_is_refused_unless_confirmed() -> None:
    view = SystemView("chat", True, {"conversation": EntityPolicy(erase="delete")}, others=2)
    for rtype in ("erasure", "restriction", "lift_restriction"):
        steps = plan(rtype, [view])
        assert [(s.system, s.action, s.task) for s in steps] == [("chat", "refused", None)]
        assert "2 identifier(s) that are not this person's" in steps[0].reason
        assert tasks_of(steps) == {} and refusals(steps) == steps
    confirmed = plan("erasure", [view], confirmed=True)
    assert tasks_of(confirmed) == {("chat", "erase"): ["conversation"]} and refusals(confirmed) == []
    # An access request changes nothing: nothing to refuse.
    assert tasks_of(plan("access", [view])) == {("chat", "export"): ["conversation"]}


def test_records_left_alone_are_counted_in_the_plan_without_values() -> None:
    why = {"service_requests": {"an identity column names someone else": 2, "related through a relation, not owned": 3}}
    steps = plan("erasure", [SystemView("crm", True, POLICIES, skipped=why)])
    skips = [s.reason for s in steps if s.entity == "service_requests"]
    assert skips == ["2 record(s) left alone: an identity column names someone else",
                     "3 record(s) left alone: related through a relation, not owned"]
    assert all(s.action == "skip" and s.task is None for s in steps if s.entity == "service_requests")
