"""A plain Python evaluator of segment rules: the oracle the SQL compiler is checked against.
Written from segments.md and the semantics in rules.py's docstring, not from the SQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from stripesync.segments.rules import AllGroup, AnyGroup, Condition, NotGroup, Rule

PERMITTED = {"confirmed", "implied"}


def _value(contact: dict[str, Any], cond: Condition) -> Any:
    if cond.field == "total_spent":
        return contact["total_spent"].get(cond.currency, 0)
    return contact[cond.field]


def _condition(contact: dict[str, Any], cond: Condition, now: datetime) -> bool:
    value = _value(contact, cond)
    if cond.op == "is_null":
        return value is None
    if cond.op == "is_not_null":
        return value is not None
    if value is None:
        return False
    target = cond.value
    match cond.op:
        case "eq":
            return bool(value == target)
        case "ne":
            return bool(value != target)
        case "gt":
            return bool(value > target)
        case "gte":
            return bool(value >= target)
        case "lt":
            return bool(value < target)
        case "lte":
            return bool(value <= target)
        case "in":
            return value in target
        case "not_in":
            return value not in target
        case "within_days":
            return bool(value >= now - timedelta(days=target))
        case "not_within_days":
            return bool(value < now - timedelta(days=target))
        case "before":
            return bool(value < target)
        case "after":
            return bool(value > target)
    raise AssertionError(cond.op)


def matches(contact: dict[str, Any], rule: Rule | None, now: datetime) -> bool:
    """Whether a contact (a dict of the contacts columns) is a member of the rule's segment."""
    if contact["consent_state"] not in PERMITTED:
        return False
    return _eval(contact, rule, now)


def _eval(contact: dict[str, Any], rule: Rule | None, now: datetime) -> bool:
    if rule is None:
        return True
    if isinstance(rule, AllGroup):
        return all(_eval(contact, r, now) for r in rule.all)
    if isinstance(rule, AnyGroup):
        return any(_eval(contact, r, now) for r in rule.any)
    if isinstance(rule, NotGroup):
        return not _eval(contact, rule.not_, now)
    return _condition(contact, rule, now)
