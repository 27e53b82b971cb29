import decimal
import json
import re

from django import forms

from .base import ConfigForm, NodeType
from .registry import register

ROWS = 5  # rule rows in the admin; a config document may not hold more rules than this

MATCHES = {"all": "all of", "any": "any of"}

OPERATORS = {
    "equals": "equals",
    "not_equals": "does not equal",
    "contains": "contains",
    "greater_than": "is greater than",
    "less_than": "is less than",
    "is_empty": "is empty",
    "is_set": "is set",
}
WITHOUT_VALUE = {"is_empty", "is_set"}
SYMBOLS = {"equals": "=", "not_equals": "!=", "contains": "contains", "greater_than": ">", "less_than": "<"}
RULE_KEYS = ("field", "operator", "value")

FLAG_PREFIX = "flags."
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]*")
FLAG_NAME = re.compile(r"flags\.[-\w]+")


class ConditionConfig(ConfigForm):
    """``match`` plus rule rows ``field_N``, ``operator_N``, ``value_N`` (N = 1 … ROWS).

    A config document gives the rows as ``rules``, a list of {"field", "operator", "value"};
    __init__ spreads it over the rows, so both shapes are validated the same way.
    """

    match = forms.ChoiceField(
        label="Match",
        choices=list(MATCHES.items()),
        required=False,
        initial="all",
        help_text="All rules must hold, or any one of them. Left empty: all.",
    )

    row_label = "Rules"
    row_columns = RULE_KEYS
    row_count = ROWS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for number in range(1, ROWS + 1):
            self.choose_form_field(f"field_{number}", flags=True)
        # Known to config documents (formfile checks keys against fields), not copied into the admin,
        # which copies base_fields only: the admin edits the rows instead.
        self.fields["rules"] = forms.JSONField(label="Rules", required=False, widget=forms.HiddenInput)
        self.rules_errors = []
        if self.is_bound and self.data.get("rules") not in (None, "", []):
            self.data = self.spread_rules(self.data)

    @classmethod
    def initial_from_config(cls, config):
        """A stored config as values for the form's own fields (rules spread over the rows)."""
        initial = {"match": config.get("match") or "all"}
        for number, rule in enumerate(config.get("rules") or [], start=1):
            for key in RULE_KEYS:
                initial[f"{key}_{number}"] = rule.get(key, "")
        return initial

    def spread_rules(self, data):
        rules = data.get("rules")
        if isinstance(rules, str):
            try:
                rules = json.loads(rules)
            except ValueError:
                self.rules_errors.append("Give the rules as a list of {field, operator, value}.")
                return data
        if not isinstance(rules, list):
            self.rules_errors.append("Give the rules as a list of {field, operator, value}.")
            return data
        data = dict(data.items())
        if any(data.get(f"{key}_{number}") not in (None, "") for number in range(1, ROWS + 1) for key in RULE_KEYS):
            self.rules_errors.append("Give either rules or the rows field_N, operator_N, value_N, not both.")
            return data
        if len(rules) > ROWS:
            self.rules_errors.append(f"At most {ROWS} rules; this has {len(rules)}.")
            return data
        for number, rule in enumerate(rules, start=1):
            if not isinstance(rule, dict):
                self.rules_errors.append(f"Rule {number} is not an object with field, operator and value.")
                continue
            unknown = sorted(set(rule) - set(RULE_KEYS))
            if unknown:
                self.rules_errors.append(
                    f"Rule {number} has unknown keys: {', '.join(unknown)} (known: field, operator, value)."
                )
            value = rule.get("value")
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = str(value)
            elif value is not None and not isinstance(value, str):
                self.rules_errors.append(f"Rule {number}: the value must be text, a number or true/false.")
                value = None
            data[f"field_{number}"] = rule.get("field") or ""
            data[f"operator_{number}"] = rule.get("operator") or ""
            data[f"value_{number}"] = "" if value is None else value
        return data

    def clean(self):
        data = super().clean()
        for message in self.rules_errors:
            self.add_error("rules", message)
        if self.rules_errors:
            return data
        rules = []
        for number in range(1, ROWS + 1):
            names = {key: f"{key}_{number}" for key in RULE_KEYS}
            if any(name in self.errors for name in names.values()):
                continue
            field, operator, value = (data.get(names[key]) or "" for key in RULE_KEYS)
            if not (field or operator or value):
                continue
            if not field:
                self.add_error(names["field"], "Name a record field, or flags.<name> for a flag.")
            elif not (FIELD_NAME.fullmatch(field) or FLAG_NAME.fullmatch(field)):
                self.add_error(names["field"], f"“{field}” is neither a field name nor flags.<name>.")
            elif not field.startswith(FLAG_PREFIX) and self.unknown_field(field):
                self.add_error(names["field"], f"This form has no field named “{field}”.")
            if not operator:
                self.add_error(names["operator"], "Choose an operator.")
            elif operator not in WITHOUT_VALUE and value == "":
                self.add_error(names["value"], f"Required for “{OPERATORS[operator]}”.")
            rule = {"field": field, "operator": operator}
            if operator not in WITHOUT_VALUE:
                rule["value"] = value
            rules.append(rule)
        if not rules and not self.errors:
            self.add_error("rules", "Give at least one rule: a field and an operator.")
        data["rules"] = rules
        return data

    def to_config(self):
        return {"match": self.cleaned_data.get("match") or "all", "rules": self.cleaned_data["rules"]}


for _number in range(1, ROWS + 1):
    ConditionConfig.base_fields[f"field_{_number}"] = forms.CharField(
        label=f"Field {_number}",
        required=False,
        max_length=120,
        help_text="A field name of this form, or flags.<name>." if _number == 1 else "",
    )
    ConditionConfig.base_fields[f"operator_{_number}"] = forms.ChoiceField(
        label=f"Operator {_number}",
        required=False,
        choices=[("", "---------"), *OPERATORS.items()],
    )
    ConditionConfig.base_fields[f"value_{_number}"] = forms.CharField(
        label=f"Value {_number}",
        required=False,
        strip=False,
        help_text="Not needed for “is empty” and “is set”." if _number == 1 else "",
    )


# Evaluation ------------------------------------------------------------------------------------


def is_empty(value):
    return value is None or value == "" or value == []


def as_number(value):
    """A finite Decimal, or None. Booleans are not numbers here (True is 1 to Python, not to an admin)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, decimal.Decimal)):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        return None
    try:
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return None
    return number if number.is_finite() else None


def as_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def equals(actual, expected):
    if isinstance(actual, bool):
        return expected.strip().lower() == as_text(actual)
    if isinstance(actual, list):
        return len(actual) == 1 and equals(actual[0], expected)
    left, right = as_number(actual), as_number(expected)
    if left is not None and right is not None:
        return left == right
    return as_text(actual) == expected


def compare(actual, expected, operator):
    if is_empty(actual) or isinstance(actual, (list, dict)):
        return False
    left, right = as_number(actual), as_number(expected)
    if left is None or right is None:
        left, right = as_text(actual), expected
    return left > right if operator == "greater_than" else left < right


def contains(actual, expected):
    if isinstance(actual, list):
        return any(equals(item, expected) for item in actual)
    if is_empty(actual) or isinstance(actual, dict):
        return False
    return expected in as_text(actual)


def rule_holds(rule, *, data, flags):
    """(holds, what the field held) for one rule; a missing field is reported as "missing"."""
    name, operator, expected = rule["field"], rule["operator"], str(rule.get("value", ""))
    source, key = (flags, name[len(FLAG_PREFIX) :]) if name.startswith(FLAG_PREFIX) else (data, name)
    if key not in source:
        return operator in ("is_empty", "not_equals"), "missing"
    actual = source[key]
    seen = json.dumps(actual, default=str, ensure_ascii=False)
    if operator == "is_empty":
        return is_empty(actual), seen
    if operator == "is_set":
        return not is_empty(actual), seen
    if operator == "equals":
        return equals(actual, expected), seen
    if operator == "not_equals":
        return not equals(actual, expected), seen
    if operator == "contains":
        return contains(actual, expected), seen
    if operator in ("greater_than", "less_than"):
        return compare(actual, expected, operator), seen
    raise ValueError(f"Unknown condition operator “{operator}”.")


def evaluate(config, *, data, flags):
    """Whether the condition holds over a record's data and flags, with one explanation per rule.

    Every rule is evaluated (no short cut), so the explanations are complete:
    ``seats > 2: true (seats is 3)``.
    """
    results = []
    explanations = []
    for rule in config.get("rules") or []:
        holds, seen = rule_holds(rule, data=data or {}, flags=flags or {})
        results.append(holds)
        explanations.append(f"{describe_rule(rule)}: {'true' if holds else 'false'} ({rule['field']} is {seen})")
    combine = any if config.get("match") == "any" else all
    return bool(results) and combine(results), explanations


def describe_value(value):
    """Numbers and true/false as they are, other text in quotes: ``seats > 2``, ``cabin = "Business"``."""
    text = str(value)
    plain = as_number(text) is not None or text.lower() in ("true", "false")
    return text if plain else json.dumps(text, ensure_ascii=False)


def describe_rule(rule):
    operator = rule.get("operator")
    if operator in WITHOUT_VALUE:
        return f"{rule.get('field')} {OPERATORS[operator]}"
    return f"{rule.get('field')} {SYMBOLS.get(operator, operator)} {describe_value(rule.get('value', ''))}"


@register
class Condition(NodeType):
    """Runs its children, in the same sequence and at once, only when a test over the record holds.

    Config: ``match`` (``all`` or ``any``; default ``all``) and ``rules``, a list of
    ``{"field", "operator", "value"}``. ``field`` is a field name of the form, or ``flags.<name>``
    for a flag. Operators: ``equals``, ``not_equals``, ``contains``, ``greater_than``,
    ``less_than``, ``is_empty``, ``is_set`` (the last two take no ``value``). At most five rules.
    In the admin the rules are rows of real fields: ``field_N``, ``operator_N``, ``value_N``.

    How values compare: when both sides read as decimal numbers they compare as numbers
    ("2" equals 2.0, "10" is greater than "9"); otherwise as text, exactly and case-sensitively
    (ISO dates therefore order correctly). A checkbox (true/false) equals "true" or "false" in any
    case. ``contains`` is a substring test on text and membership in a list (multiple choice);
    ``equals`` on a list holds only for a one-item list. ``None``, "" and [] are empty. A field
    missing from the record is empty, equals nothing and contains nothing: ``is_empty`` and
    ``not_equals`` hold, every other operator does not.
    """

    key = "condition"
    label = "Condition"
    config_form = ConditionConfig
    config_keys = ("match", "rules")
    is_container = True
    is_deferred = False

    @classmethod
    def describe(cls, config):
        rules = [describe_rule(rule) for rule in config.get("rules") or []]
        if len(rules) == 1:
            return rules[0]
        return f"{MATCHES.get(config.get('match') or 'all', 'all of')}: {', '.join(rules)}"

    @classmethod
    def settled_output(cls, *, held):
        return {"matched": held}

    def holds(self, ctx):
        """Whether the children run for this record; each rule's outcome goes to the task's log."""
        holds, explanations = evaluate(ctx.config, data=ctx.record.data, flags=ctx.record.flags)
        for line in explanations:
            ctx.log(line)
        ctx.log(f"condition {'holds' if holds else 'does not hold'}")
        return holds
