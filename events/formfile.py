"""Export and import a form with its event trees as one JSON document (DESIGN.md, section 10).

The document::

    {"form": {"slug", "title", "description", "submit_label", "is_published",
              "collect_debug" (only when true),
              "fields": [{"name", "label", "type", "required",
                          and, only when set: "help_text", "choices", "min", "max",
                          "max_length", "pattern", "default"}, ...],
              "waiting": {"poll_seconds", "wait_for", "wait_flag", "max_wait_seconds", "title",
                          "done_message", "done_redirect_url", "failed_message"}},
     "events": {"<event name>": [node, ...], ...}}

    node = {"type", "name" (when set), "label" (when set), "visible" (when true), "config",
            "retry": {"max_attempts", "backoff_seconds", "backoff_max_seconds"}
                     (only when it is not the default: 1 attempt, 10 s, 600 s),
            "children": [node, ...]  (containers only; may be empty),
            "on_error": [node, ...]  (the error branch, which any node may have; only when not empty)}

``form.slug`` and ``form.title``, a field's ``name`` and a node's ``type`` are required; every other
key may be left out and then takes the model's default (a field's label defaults to its name, its
type to ``text``; a node's config to ``{}``; a left-out key of ``retry`` takes its default).
``retry.max_attempts`` is 1 to 100; the backoffs are whole seconds (0 to a year),
``backoff_max_seconds`` at least ``backoff_seconds``. A node's ``config`` holds exactly the keys of its type's
config form, and is stored as that form normalises it (``{"after_seconds": 600}`` on a delay is
stored as ``{"rule": "after", "after_seconds": 600}``).

Importing is declarative and all or nothing: the whole document is checked first, and every problem
is reported with its JSON path (``form.fields[2].type: unknown type "colour" ...``) in one
FormFileError, before anything is written. A valid document is then written in one transaction.
Importing a slug that already exists REPLACES that form: its settings, its fields (matched by name,
so a kept field keeps its row; fields the document leaves out are deleted) and all its event trees
(every event, also those the document does not mention). Records, runs and tasks are kept: runs are
pinned to their snapshots, and records keep the values of removed fields in their data.
"""

import decimal
import json
import re
from dataclasses import dataclass, field

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction

from .models import RECORD_UPDATE, InvalidTreeOperation, Node, field_model, form_model
from .retry import RetryPolicy
from .nodes import registry
from .templating import validate_template

Form, Field = form_model(), field_model()  # forms_app's, looked up by name: events never imports forms_app


class FormFileError(Exception):
    """A form file that cannot be imported. ``problems`` lists every (path, message)."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self):
        return [f"{path}: {message}" if path else message for path, message in self.problems]


@dataclass
class ImportResult:
    """What an import did."""

    form: Form
    created: bool
    field_count: int
    node_counts: dict = field(default_factory=dict)  # event name -> number of nodes
    removed_fields: list = field(default_factory=list)

    def summary(self):
        verb = "Created" if self.created else "Replaced"
        trees = ", ".join(f"{event}: {count} node{'s' * (count != 1)}" for event, count in self.node_counts.items())
        lines = [
            f"{verb} form “{self.form.slug}” ({self.form.title}): {self.field_count} "
            f"field{'s' * (self.field_count != 1)}; {trees or 'no event trees'}."
        ]
        if not self.created:
            lines.append("Its previous fields and event trees were replaced; records, runs and tasks were kept.")
        if self.removed_fields:
            lines.append(f"Removed fields: {', '.join(self.removed_fields)} (records keep their values).")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Export


def _number(value):
    if value is None:
        return None
    value = decimal.Decimal(value)
    return int(value) if value == value.to_integral_value() else float(value)


def _field_export(field_row):
    item = {"name": field_row.name, "label": field_row.label, "type": field_row.type, "required": field_row.required}
    optional = {
        "help_text": field_row.help_text,
        "choices": list(field_row.choices or []),
        "min": _number(field_row.min_value),
        "max": _number(field_row.max_value),
        "max_length": field_row.max_length,
        "pattern": field_row.pattern,
        "default": field_row.default,
    }
    item.update({key: value for key, value in optional.items() if value not in (None, "", [])})
    return item


def _node_export(node):
    item = {"type": node.type}
    if node.name:
        item["name"] = node.name
    if node.label:
        item["label"] = node.label
    if node.visible:
        item["visible"] = True
    item["config"] = node.config if isinstance(node.config, dict) else {}
    retry = node.retry_policy.as_document()
    if retry != RetryPolicy().as_document():
        item["retry"] = retry
    try:
        is_container = registry.get(node.type).is_container
    except registry.UnknownNodeType:
        is_container = False
    if is_container:
        item["children"] = []
    return item


def _events_export(form):
    events, stack = {}, []
    for node in Node.objects.filter(form=form).order_by("path"):
        item = _node_export(node)
        while stack and stack[-1][0] >= node.depth:
            stack.pop()
        if stack:
            parent = stack[-1][1]
            key = "on_error" if node.branch == Node.Branch.ON_ERROR else "children"
            parent.setdefault(key, []).append(item)
        else:
            events.setdefault(node.event, []).append(item)
        stack.append((node.depth, item))
    order = sorted(events, key=lambda event: (event != RECORD_UPDATE, event))
    return {event: events[event] for event in order}


def form_export(form):
    """The form, its fields, its waiting page and all its event trees, as a JSON-ready dict."""
    head = {
        "slug": form.slug,
        "title": form.title,
        "description": form.description,
        "submit_label": form.submit_label,
        "is_published": form.is_published,
    }
    if form.collect_debug:
        head["collect_debug"] = True
    return {
        "form": {
            **head,
            "fields": [_field_export(row) for row in form.fields.order_by("position", "id")],
            "waiting": {
                "poll_seconds": form.poll_seconds,
                "wait_for": form.wait_for,
                "wait_flag": form.wait_flag,
                "max_wait_seconds": form.max_wait_seconds,
                "title": form.waiting_title,
                "done_message": form.done_message,
                "done_redirect_url": form.done_redirect_url,
                "failed_message": form.failed_message,
            },
        },
        "events": _events_export(form),
    }


def form_export_json(form):
    return json.dumps(form_export(form), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Import: check everything into a plan, then write the plan


def document_parse(text):
    """JSON text (str or bytes) as a document; a FormFileError when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormFileError([("", f"not valid JSON: {exc}")]) from None


def _key_path(path, key):
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _describe(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


KINDS = {
    "string": (lambda v: isinstance(v, str), "a string"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "object": (lambda v: isinstance(v, dict), "an object"),
}

# document key -> (model attribute, kind, required)
FORM_KEYS = {
    "slug": ("slug", "string", True),
    "title": ("title", "string", True),
    "description": ("description", "string", False),
    "submit_label": ("submit_label", "string", False),
    "is_published": ("is_published", "boolean", False),
    "collect_debug": ("collect_debug", "boolean", False),
    "fields": (None, "list", False),
    "waiting": (None, "object", False),
}
WAITING_KEYS = {
    "poll_seconds": ("poll_seconds", "integer", False),
    "wait_for": ("wait_for", "string", False),
    "wait_flag": ("wait_flag", "string", False),
    "max_wait_seconds": ("max_wait_seconds", "integer", False),
    "title": ("waiting_title", "string", False),
    "done_message": ("done_message", "string", False),
    "done_redirect_url": ("done_redirect_url", "string", False),
    "failed_message": ("failed_message", "string", False),
}
FIELD_KEYS = {
    "name": ("name", "string", True),
    "label": ("label", "string", False),
    "type": ("type", "string", False),
    "required": ("required", "boolean", False),
    "help_text": ("help_text", "string", False),
    "choices": ("choices", "list", False),
    "min": ("min_value", "number", False),
    "max": ("max_value", "number", False),
    "max_length": ("max_length", "integer", False),
    "pattern": ("pattern", "string", False),
    "default": ("default", "string", False),
}
NODE_KEYS = {
    "type": ("type", "string", True),
    "name": ("name", "string", False),
    "label": ("label", "string", False),
    "visible": ("visible", "boolean", False),
    "config": ("config", "object", False),
    "retry": (None, "object", False),
    "children": (None, "list", False),
    "on_error": (None, "list", False),
}
# document key -> (Node attribute, kind, required)
RETRY_KEYS = {
    "max_attempts": ("max_attempts", "integer", False),
    "backoff_seconds": ("retry_backoff_seconds", "integer", False),
    "backoff_max_seconds": ("retry_backoff_max_seconds", "integer", False),
    "non_retryable": ("retry_non_retryable", "list", False),
}
CHOICE_TYPES = (Field.Type.CHOICE, Field.Type.MULTIPLE_CHOICE)


def _model_defaults(model, keys):
    return {attr: model._meta.get_field(attr).get_default() for attr, _kind, _required in keys.values() if attr}


@dataclass
class _Plan:
    slug: str
    form_attrs: dict
    fields: list  # of attribute dicts, in order
    events: dict  # event name -> list of node plans


class _Checker:
    def __init__(self):
        self.problems = []

    def problem(self, path, message):
        self.problems.append((path, message))

    def read(self, raw, path, keys):
        """The known keys of an object with the right JSON types, and the keys found wrong.

        Reports unknown keys, missing required keys and wrong types; leaves bad values out.
        Returns (values, bad) with values None when ``raw`` is not an object.
        """
        if not isinstance(raw, dict):
            self.problem(path, f"expected an object, got {_describe(raw)}")
            return None, set()
        values, bad = {}, set()
        for key, value in raw.items():
            if key not in keys:
                self.problem(_key_path(path, key), f"unknown key (known keys: {', '.join(keys)})")
                continue
            _attr, kind, required = keys[key]
            check, expected = KINDS[kind]
            if not check(value):
                hint = " (leave the key out instead)" if value is None and not required else ""
                self.problem(_key_path(path, key), f"expected {expected}, got {_describe(value)}{hint}")
                bad.add(key)
            else:
                values[key] = value
        for key, (_attr, _kind, required) in keys.items():
            if required and key not in raw:
                self.problem(_key_path(path, key), "required")
                bad.add(key)
        return values, bad

    def model_errors(self, instance, paths, skip):
        """Run the model's own field validation; report it under ``paths`` (attribute -> path)."""
        try:
            instance.full_clean(exclude=["form"] if isinstance(instance, Field) else None,
                                validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            for attr, messages in exc.message_dict.items():
                if attr in skip:
                    continue
                for message in messages:
                    self.problem(paths.get(attr, ""), message)

    # -- form ----------------------------------------------------------------------------------

    def check_document(self, document):
        top, _bad = self.read(document, "", {"form": (None, "object", True), "events": (None, "object", False)})
        if top is None:
            return None
        form_attrs, fields, form_fields = self.check_form(top["form"], "form") if "form" in top else (None, [], None)
        events = self.check_events(top.get("events", {}), "events", form_fields)
        if form_attrs is None:
            return None
        return _Plan(slug=form_attrs["slug"], form_attrs=form_attrs, fields=fields, events=events)

    def check_form(self, raw, path):
        values, bad = self.read(raw, path, FORM_KEYS)
        waiting_path = _key_path(path, "waiting")
        waiting, waiting_bad = ({}, set())
        if "waiting" in values:
            waiting, waiting_bad = self.read(values["waiting"], waiting_path, WAITING_KEYS)
        attrs = _model_defaults(Form, FORM_KEYS) | _model_defaults(Form, WAITING_KEYS)
        attrs.update({FORM_KEYS[key][0]: value for key, value in values.items() if FORM_KEYS[key][0]})
        attrs.update({WAITING_KEYS[key][0]: value for key, value in waiting.items()})

        paths = {attr: _key_path(path, key) for key, (attr, _kind, _required) in FORM_KEYS.items() if attr}
        paths |= {attr: _key_path(waiting_path, key) for key, (attr, _kind, _required) in WAITING_KEYS.items()}
        skip = {FORM_KEYS[key][0] for key in bad} | {WAITING_KEYS[key][0] for key in waiting_bad}
        self.model_errors(Form(**attrs), paths, skip)
        if "poll_seconds" in waiting and waiting["poll_seconds"] < 1:
            self.problem(paths["poll_seconds"], "must be at least 1")
        if attrs["wait_for"] == Form.WaitFor.FLAG and not attrs["wait_flag"]:
            self.problem(paths["wait_flag"], 'required when wait_for is "flag"')
        for attr in ("done_message", "failed_message"):
            try:
                validate_template(attrs[attr])
            except ValidationError as exc:
                self.problem(paths[attr], " ".join(exc.messages))

        fields = self.check_fields(values.get("fields", []), _key_path(path, "fields"))
        # What config forms check field names against: the document's fields, name → type.
        form_fields = {field_attrs["name"]: field_attrs["type"] for field_attrs in fields}
        return attrs, fields, form_fields

    def check_fields(self, raw_fields, path):
        fields, seen = [], {}
        for index, raw in enumerate(raw_fields):
            item_path = f"{path}[{index}]"
            values, bad = self.read(raw, item_path, FIELD_KEYS)
            if values is None:
                continue
            paths = {attr: _key_path(item_path, key) for key, (attr, _kind, _required) in FIELD_KEYS.items()}
            skip = {FIELD_KEYS[key][0] for key in bad}
            attrs = _model_defaults(Field, FIELD_KEYS)
            if "name" in values:
                attrs["label"] = values["name"].replace("_", " ").capitalize()
            for key, value in values.items():
                attrs[FIELD_KEYS[key][0]] = decimal.Decimal(str(value)) if key in ("min", "max") else value

            if attrs["type"] not in Field.Type.values:
                known = ", ".join(Field.Type.values)
                self.problem(paths["type"], f'unknown type "{attrs["type"]}" (known types: {known})')
                skip.add("type")
            for choice_index, choice in enumerate(attrs["choices"]):
                if not isinstance(choice, str):
                    self.problem(f"{paths['choices']}[{choice_index}]", f"expected a string, got {_describe(choice)}")
            if attrs["type"] in CHOICE_TYPES and not attrs["choices"]:
                self.problem(paths["choices"], f"a {attrs['type']} field needs at least one choice")
            if None not in (attrs["min_value"], attrs["max_value"]) and attrs["min_value"] > attrs["max_value"]:
                self.problem(paths["max_value"], "is smaller than min")
            if attrs["pattern"]:
                try:
                    re.compile(attrs["pattern"])
                except re.error as exc:
                    self.problem(paths["pattern"], f"not a valid regular expression: {exc}")
                    skip.add("pattern")
            self.model_errors(Field(**attrs), paths, skip)

            if "name" in values:
                name = values["name"]
                if name in seen:
                    self.problem(paths["name"], f'duplicate field name "{name}" (also {seen[name]})')
                else:
                    seen[name] = item_path
                fields.append(attrs)
        return fields

    # -- event trees ---------------------------------------------------------------------------

    def check_events(self, raw_events, path, form_fields):
        events = {}
        for event, nodes in raw_events.items():
            event_path = _key_path(path, event)
            if not re.fullmatch(r"[-a-zA-Z0-9_]{1,100}", event):
                self.problem(event_path, "an event name is 1 to 100 letters, digits, underscores or hyphens")
            if not isinstance(nodes, list):
                self.problem(event_path, f"expected a list of nodes, got {_describe(nodes)}")
                continue
            names = {}
            plans = [self.check_node(raw, f"{event_path}[{index}]", form_fields, names) for index, raw in enumerate(nodes)]
            events[event] = [plan for plan in plans if plan is not None]
        return events

    def check_node(self, raw, path, form_fields, names):
        values, bad = self.read(raw, path, NODE_KEYS)
        if values is None:
            return None
        node_type = None
        if "type" in values:
            try:
                node_type = registry.get(values["type"])
            except registry.UnknownNodeType:
                known = ", ".join(cls.key for cls in registry.all_types())
                self.problem(_key_path(path, "type"), f'unknown node type "{values["type"]}" (known types: {known})')

        name = values.get("name", "")
        if name:
            if not re.fullmatch(r"[-a-zA-Z0-9_]{1,100}", name):
                self.problem(_key_path(path, "name"), "a node name is 1 to 100 letters, digits, underscores or hyphens")
            if name in names:
                self.problem(_key_path(path, "name"), f'duplicate node name "{name}" in this tree (also {names[name]})')
            else:
                names[name] = path
        label = values.get("label", "")
        label_limit = Node._meta.get_field("label").max_length
        if len(label) > label_limit:
            self.problem(_key_path(path, "label"), f"at most {label_limit} characters (it has {len(label)})")

        config = values.get("config", {})
        if node_type is not None and "config" not in bad:
            config = self.check_config(node_type, config, _key_path(path, "config"), form_fields)

        retry = self.check_retry(values["retry"], _key_path(path, "retry")) if "retry" in values else {}

        children_path, on_error_path = _key_path(path, "children"), _key_path(path, "on_error")
        children = [self.check_node(child, f"{children_path}[{index}]", form_fields, names)
                    for index, child in enumerate(values.get("children", []))]
        on_error = [self.check_node(child, f"{on_error_path}[{index}]", form_fields, names)
                    for index, child in enumerate(values.get("on_error", []))]
        if node_type is not None and values.get("children") and not node_type.is_container:
            containers = ", ".join(cls.key for cls in registry.all_types() if cls.is_container)
            self.problem(
                children_path, f'a node of type "{node_type.key}" cannot have children; only containers ({containers}) can'
            )
        if node_type is not None and values.get("on_error"):
            # The tree's own rule decides (NodeManager.check_parent), so the import never accepts
            # a tree that the manager would refuse half-way through writing it.
            parent = Node(type=node_type.key, label=label or name or f"This {node_type.label} node")
            try:
                Node.objects.check_parent(Node(type=node_type.key, branch=Node.Branch.ON_ERROR), parent)
            except InvalidTreeOperation as exc:
                self.problem(on_error_path, f"an error branch is not allowed here: {' '.join(exc.messages)}")
        return {
            "type": values.get("type", ""),
            "name": name,
            "label": label,
            "visible": values.get("visible", False),
            "config": config,
            "retry": retry,
            "children": [child for child in children if child is not None],
            "on_error": [child for child in on_error if child is not None],
        }

    def check_retry(self, raw, path):
        """The retry policy as Node columns (left-out keys take the defaults), checked by RetryPolicy."""
        values, bad = self.read(raw, path, RETRY_KEYS)
        if values is None or bad:
            return {}
        policy = RetryPolicy.of_document(values)
        for key, message in policy.problems().items():
            self.problem(_key_path(path, key), message)
        return policy.node_fields()

    def check_config(self, node_type, config, path, form_fields):
        config_form = node_type.config_form(form_fields=form_fields)
        bad = set()
        for key, value in config.items():
            if key not in config_form.fields:
                known = ", ".join(config_form.fields) or "none"
                self.problem(_key_path(path, key), f"unknown key for {node_type.key} (known keys: {known})")
                continue
            kind = _config_kind(config_form.fields[key])
            if kind and value is not None and not KINDS[kind][0](value):
                self.problem(_key_path(path, key), f"expected {KINDS[kind][1]}, got {_describe(value)}")
                bad.add(key)
        try:
            return node_type.clean_config(config, form_fields=form_fields)
        except ValidationError as exc:
            errors = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}
            for key, messages in errors.items():
                if key in bad or (bad and key == NON_FIELD_ERRORS):  # follow from a value already reported
                    continue
                where = path if key == NON_FIELD_ERRORS else _config_error_path(path, key, config)
                label = config_form.fields[key].label if key in config_form.fields else None
                for message in messages:
                    if label and message.startswith(f"{label}: "):
                        message = message[len(label) + 2:]
                    self.problem(where, message)
            return config


def _config_error_path(path, key, config):
    """Where a config form's error belongs in the document.

    A condition's form reports rule N as the admin rows ``field_N``, ``operator_N``, ``value_N``;
    a document that gave ``rules`` gets ``rules[N-1].field`` instead.
    """
    row = re.fullmatch(r"(field|operator|value)_(\d+)", key)
    if row and "rules" in config:
        return f"{_key_path(path, 'rules')}[{int(row[2]) - 1}].{row[1]}"
    return _key_path(path, key)


def _config_kind(form_field):
    """The JSON type a config form field takes (None: any)."""
    if isinstance(form_field, forms.JSONField):
        return None
    if isinstance(form_field, forms.BooleanField):
        return "boolean"
    if isinstance(form_field, (forms.FloatField, forms.DecimalField)):  # both subclass IntegerField
        return "number"
    if isinstance(form_field, forms.IntegerField):
        return "integer"
    if isinstance(form_field, (forms.CharField, forms.ChoiceField, forms.DateField, forms.DateTimeField, forms.TimeField)):
        return "string"
    return None


def form_check(document):
    """Check a whole document; a FormFileError lists every problem. Returns the plan to write."""
    checker = _Checker()
    plan = checker.check_document(document)
    if checker.problems or plan is None:
        raise FormFileError(checker.problems or [("", "nothing to import")])
    return plan


def _node_create(form, event, plan, *, parent=None, branch=Node.Branch.MAIN):
    node = Node(form=form, event=event, type=plan["type"], name=plan["name"], label=plan["label"],
                visible=plan["visible"], config=plan["config"], branch=branch, **plan["retry"])
    node = Node.objects.add_root(instance=node) if parent is None else Node.objects.add_child(parent, instance=node)
    count = 1
    for child in plan["children"]:
        count += _node_create(form, event, child, parent=node)
    for child in plan["on_error"]:
        count += _node_create(form, event, child, parent=node, branch=Node.Branch.ON_ERROR)
    return count


def form_import_result(document):
    """Import a form file (a parsed document); see the module docstring. Raises FormFileError."""
    plan = form_check(document)
    try:
        with transaction.atomic():
            form = Form.objects.filter(slug=plan.slug).first()
            created = form is None
            form = form or Form()
            for attr, value in plan.form_attrs.items():
                setattr(form, attr, value)
            form.save()

            existing = {row.name: row for row in form.fields.all()}
            keep = {attrs["name"] for attrs in plan.fields}
            removed = sorted(set(existing) - keep)
            form.fields.filter(name__in=removed).delete()
            for position, attrs in enumerate(plan.fields):
                row = existing.get(attrs["name"]) or Field(form=form)
                for attr, value in attrs.items():
                    setattr(row, attr, value)
                row.position = position
                row.save()

            Node.objects.filter(form=form).delete()
            counts = {}
            for event, nodes in plan.events.items():
                total = sum(_node_create(form, event, node) for node in nodes)
                if total:
                    counts[event] = total
    except InvalidTreeOperation as exc:
        raise FormFileError([("events", " ".join(exc.messages))]) from None
    return ImportResult(form=form, created=created, field_count=len(plan.fields), node_counts=counts,
                        removed_fields=removed)


def form_import(document):
    """Import a form file (a parsed document) and return the Form. Raises FormFileError."""
    return form_import_result(document).form


__all__ = [
    "FormFileError",
    "ImportResult",
    "document_parse",
    "form_check",
    "form_export",
    "form_export_json",
    "form_import",
    "form_import_result",
]
