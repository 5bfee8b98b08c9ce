"""The custom segment rule language of segments.md: pydantic models that validate it, and
a compiler to one SQL boolean expression over the `contacts` table (alias `c`).

Semantics, shared by every op (and by the tests' reference evaluator):
- A condition on a missing value (NULL) is false, whatever the op, so `not` of it is
  true. Use `is_null` / `is_not_null` to ask about missing times or countries.
- `total_spent` of a currency the contact never paid in is 0.
- `within_days: N` means at or after now - N*24h; `not_within_days: N` means before it.
  So at exactly 30 days a purchase is still "within 30 days".
- Strings compare by code point (`COLLATE "C"`); `email_domain` values are lowercased and
  `country` values uppercased when a rule is validated, as contacts store them.
- Depth counts nested groups: `{"all": [{"any": [condition]}]}` has depth 2; at most 5.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

MAX_DEPTH = 5
MAX_CONDITIONS = 50
MAX_LIST_VALUES = 100
MAX_DAYS = 36_500
MAX_AMOUNT = 10**15  # minor units; far above any real total, well inside bigint

NUMBER_FIELDS = frozenset({"purchase_count", "refund_count"})
MONEY_FIELDS = frozenset({"total_spent"})
TIME_FIELDS = frozenset(
    {
        "first_purchase_at",
        "last_purchase_at",
        "last_failed_at",
        "last_refund_at",
        "customer_created_at",
    }
)
STRING_FIELDS = frozenset({"email_domain", "country", "subscription_status"})
BOOL_FIELDS = frozenset({"has_failed_since_last_purchase"})
NULLABLE_FIELDS = TIME_FIELDS | {"country"}
SUBSCRIPTION_STATUSES = ("active", "trialing", "past_due", "canceled", "none")

FieldName = Literal[
    "purchase_count",
    "refund_count",
    "total_spent",
    "first_purchase_at",
    "last_purchase_at",
    "last_failed_at",
    "last_refund_at",
    "customer_created_at",
    "email_domain",
    "country",
    "subscription_status",
    "has_failed_since_last_purchase",
]
Op = Literal[
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "not_in",
    "within_days",
    "not_within_days",
    "before",
    "after",
    "is_null",
    "is_not_null",
]
COMPARISON_OPS = ("eq", "ne", "gt", "gte", "lt", "lte")
LIST_OPS = ("in", "not_in")
NULL_OPS = ("is_null", "is_not_null")
TIME_OPS = ("within_days", "not_within_days", "before", "after")


def ops_for(field: str) -> tuple[str, ...]:
    """The ops that fit a field."""
    if field in NUMBER_FIELDS or field in MONEY_FIELDS:
        ops: tuple[str, ...] = COMPARISON_OPS + LIST_OPS
    elif field in STRING_FIELDS:
        ops = COMPARISON_OPS + LIST_OPS
    elif field in BOOL_FIELDS:
        ops = ("eq", "ne")
    else:
        ops = TIME_OPS
    if field in NULLABLE_FIELDS:
        ops += NULL_OPS
    return ops


_INT = TypeAdapter(Annotated[StrictInt, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)])
_DAYS = TypeAdapter(Annotated[StrictInt, Field(ge=0, le=MAX_DAYS)])
_TIME = TypeAdapter(AwareDatetime)
_BOOL = TypeAdapter(StrictBool)
_STR = TypeAdapter(Annotated[str, Field(strict=True, min_length=1, max_length=255)])


def _first_message(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"])


def _scalar(field: str, value: Any) -> Any:
    if field in NUMBER_FIELDS or field in MONEY_FIELDS:
        return _INT.validate_python(value)
    if field in BOOL_FIELDS:
        return _BOOL.validate_python(value)
    text = _STR.validate_python(value)
    if field == "email_domain":
        return text.lower()
    if field == "country":
        if len(text) != 2 or not text.isascii() or not text.isalpha():
            raise ValueError("country must be a two-letter ISO code")
        return text.upper()
    if field == "subscription_status" and text not in SUBSCRIPTION_STATUSES:
        raise ValueError(f"subscription_status is one of {', '.join(SUBSCRIPTION_STATUSES)}")
    return text


class Condition(BaseModel):
    """`{"field", "op", "value"}` (and `currency` for `total_spent`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: FieldName
    op: Op
    currency: str | None = Field(default=None, validate_default=True)
    value: Any = Field(default=None, validate_default=True)

    @field_validator("op")
    @classmethod
    def _op_fits_field(cls, op: str, info: ValidationInfo) -> str:
        field = info.data.get("field")
        if field is not None and op not in ops_for(field):
            raise ValueError(
                f"{op} does not apply to {field}; use one of {', '.join(ops_for(field))}"
            )
        return op

    @field_validator("currency")
    @classmethod
    def _currency_for_money(cls, currency: str | None, info: ValidationInfo) -> str | None:
        field = info.data.get("field")
        if field is None:
            return currency
        if field not in MONEY_FIELDS:
            if currency is not None:
                raise ValueError(f"currency applies to total_spent only, not {field}")
            return None
        if currency is None:
            raise ValueError('total_spent needs a currency, e.g. "usd"')
        if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
            raise ValueError('currency is a three-letter ISO code, e.g. "usd"')
        return currency.lower()

    @field_validator("value")
    @classmethod
    def _value_fits_op(cls, value: Any, info: ValidationInfo) -> Any:
        field, op = info.data.get("field"), info.data.get("op")
        if field is None or op is None:
            return value  # the field or op error is the one to report
        try:
            if op in NULL_OPS:
                if value is not None:
                    raise ValueError(f"{op} takes no value")
                return None
            if value is None:
                raise ValueError(f"{op} needs a value")
            if op in ("within_days", "not_within_days"):
                return _DAYS.validate_python(value)
            if op in ("before", "after"):
                return _TIME.validate_python(value)
            if op in LIST_OPS:
                if not isinstance(value, list) or not 1 <= len(value) <= MAX_LIST_VALUES:
                    raise ValueError(f"{op} needs a list of 1 to {MAX_LIST_VALUES} values")
                return tuple(sorted({_scalar(field, item) for item in value}))
            return _scalar(field, value)
        except ValidationError as exc:
            raise ValueError(_first_message(exc)) from None


class AllGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    all: list[Rule] = Field(min_length=1)


class AnyGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    any: list[Rule] = Field(min_length=1)


class NotGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    not_: Rule = Field(alias="not")


def _node_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("all", "any", "not"):
            if key in value:
                return key
        if "field" in value:
            return "condition"
        return None
    if isinstance(value, AllGroup | AnyGroup | NotGroup | Condition):
        return {AllGroup: "all", AnyGroup: "any", NotGroup: "not", Condition: "condition"}[
            type(value)
        ]
    return None


Rule = Annotated[
    Annotated[AllGroup, Tag("all")]
    | Annotated[AnyGroup, Tag("any")]
    | Annotated[NotGroup, Tag("not")]
    | Annotated[Condition, Tag("condition")],
    Discriminator(
        _node_kind,
        custom_error_type="invalid_rule",
        custom_error_message="a rule is a condition {field, op, value} or a group all, any or not",
    ),
]
AllGroup.model_rebuild()
AnyGroup.model_rebuild()
NotGroup.model_rebuild()
RULE_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)


class RuleError(ValueError):
    """A rule that is not valid: `fields` name each bad part by its path (`rule.all[2].value`)."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{f['field']}: {f['message']}" for f in fields))
        self.fields = fields


def format_path(root: str, loc: tuple[int | str, ...]) -> str:
    """`("all", "all", 2, "any", "any", 0, "condition", "value")` -> `rule.all[2].any[0].value`.

    pydantic puts the union tag in the location wherever a rule node is parsed (at the
    root, after each list index of a group, after `not`); those tags are dropped here.
    """
    path, expect_node, kind = root, True, None
    for part in loc:
        if expect_node:
            kind, expect_node = part, False  # the tag names the node's kind
            continue
        if isinstance(part, int):
            path += f"[{part}]"
            expect_node = kind in ("all", "any")
        else:
            path += f".{part}"
            expect_node = kind == "not" and part == "not"
    return path


def _depth_and_count(node: Any) -> tuple[int, int]:
    if isinstance(node, AllGroup | AnyGroup):
        children = [
            _depth_and_count(child)
            for child in (node.all if isinstance(node, AllGroup) else node.any)
        ]
        return 1 + max(d for d, _ in children), sum(n for _, n in children)
    if isinstance(node, NotGroup):
        depth, count = _depth_and_count(node.not_)
        return depth + 1, count
    return 0, 1


def _raw_too_deep(value: Any, limit: int) -> bool:
    """Checked before pydantic so an absurdly nested body costs nothing."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth) for child in node)
    return False


def parse_rule(value: Any, root: str = "rule") -> Rule:
    """Validate a rule given as JSON data; raises RuleError naming the bad parts by path."""
    if _raw_too_deep(value, MAX_DEPTH + 1):
        raise RuleError([{"field": root, "message": f"rules nest at most {MAX_DEPTH} groups deep"}])
    try:
        rule = RULE_ADAPTER.validate_python(value)
    except ValidationError as exc:
        raise RuleError(
            [
                {
                    "field": format_path(root, tuple(e["loc"])),
                    "message": e["msg"].removeprefix("Value error, "),
                }
                for e in exc.errors()
            ]
        ) from None
    depth, count = _depth_and_count(rule)
    if depth > MAX_DEPTH:
        raise RuleError([{"field": root, "message": f"rules nest at most {MAX_DEPTH} groups deep"}])
    if count > MAX_CONDITIONS:
        raise RuleError(
            [{"field": root, "message": f"a rule has at most {MAX_CONDITIONS} conditions"}]
        )
    return rule


def rule_to_json(rule: Rule) -> dict[str, Any]:
    """The canonical JSON form of a validated rule (normalised values), as stored."""
    data: dict[str, Any] = RULE_ADAPTER.dump_python(
        rule, mode="json", by_alias=True, exclude_none=True
    )
    return data


# --- compiling to SQL -------------------------------------------------------------------


class SqlParams:
    """Bind parameters of a compiled rule. Every value is bound and cast explicitly, so the
    SQL text holds only column names from the whitelist above and parameter names."""

    def __init__(self, prefix: str = "r") -> None:
        self.prefix = prefix
        self.values: dict[str, Any] = {}

    def bind(self, value: Any, sql_type: str) -> str:
        name = f"{self.prefix}{len(self.values)}"
        self.values[name] = list(value) if isinstance(value, tuple) else value
        return f"CAST(:{name} AS {sql_type})"


NOW = "CAST(:now AS timestamptz)"  # callers bind `now` (kit.clock.utcnow) once per statement


def _column(cond: Condition, params: SqlParams, alias: str) -> tuple[str, str]:
    """(SQL of the field's value, SQL type of its parameters)."""
    if cond.field in MONEY_FIELDS:
        currency = params.bind(cond.currency, "text")
        return f"COALESCE(({alias}.total_spent ->> {currency})::bigint, 0)", "bigint"
    if cond.field in NUMBER_FIELDS:
        return f"{alias}.{cond.field}", "bigint"
    if cond.field in STRING_FIELDS:
        return f'{alias}.{cond.field} COLLATE "C"', "text"
    if cond.field in BOOL_FIELDS:
        return f"{alias}.{cond.field}", "boolean"
    return f"{alias}.{cond.field}", "timestamptz"


_COMPARE = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _condition_sql(cond: Condition, params: SqlParams, alias: str) -> str:
    column, sql_type = _column(cond, params, alias)
    op = cond.op
    if op in _COMPARE:
        expr = f"{column} {_COMPARE[op]} {params.bind(cond.value, sql_type)}"
    elif op == "in":
        expr = f"{column} = ANY({params.bind(cond.value, sql_type + '[]')})"
    elif op == "not_in":
        expr = f"NOT ({column} = ANY({params.bind(cond.value, sql_type + '[]')}))"
    elif op in ("within_days", "not_within_days"):
        cutoff = f"{NOW} - make_interval(hours => {params.bind(cond.value * 24, 'integer')})"
        expr = f"{column} {'>=' if op == 'within_days' else '<'} {cutoff}"
    elif op == "before":
        expr = f"{column} < {params.bind(cond.value, 'timestamptz')}"
    elif op == "after":
        expr = f"{column} > {params.bind(cond.value, 'timestamptz')}"
    elif op == "is_null":
        return f"({alias}.{cond.field} IS NULL)"
    else:
        return f"({alias}.{cond.field} IS NOT NULL)"
    # NULL compares as unknown in SQL; the rule language says false (see module docstring).
    return f"COALESCE({expr}, false)"


def compile_rule(rule: Rule | None, params: SqlParams, alias: str = "c") -> str:
    """One SQL boolean expression over `contacts AS {alias}`; None (segment `all`) is TRUE."""
    if rule is None:
        return "TRUE"
    if isinstance(rule, AllGroup):
        return "(" + " AND ".join(compile_rule(r, params, alias) for r in rule.all) + ")"
    if isinstance(rule, AnyGroup):
        return "(" + " OR ".join(compile_rule(r, params, alias) for r in rule.any) + ")"
    if isinstance(rule, NotGroup):
        return f"(NOT {compile_rule(rule.not_, params, alias)})"
    return _condition_sql(rule, params, alias)


def rule_uses_time(rule: Rule | None) -> bool:
    """Whether membership can change with the clock alone (within/not_within days)."""
    if rule is None:
        return False
    if isinstance(rule, AllGroup | AnyGroup):
        return any(
            rule_uses_time(r) for r in (rule.all if isinstance(rule, AllGroup) else rule.any)
        )
    if isinstance(rule, NotGroup):
        return rule_uses_time(rule.not_)
    return rule.op in ("within_days", "not_within_days")
