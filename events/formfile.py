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
(every event, also those the document does not mention; a node is matched by its ``name`` within its
tree, an unnamed one by its type and place (``KeptIds``), and keeps its id, so admin links and runs'
references to it hold, and re-importing a tree's own export changes nothing).

Versions (events/versions.py): a form's Node rows are the drafts of its trees, and what runs is each
tree's latest published version. ``form_export`` writes each tree's live version by default (a tree
never published is left out), a chosen version (``versions={event: number}``), or the drafts
(``draft=True``). ``form_import`` writes the drafts, then publishes every tree whose draft changed
as its next version (``publish=False``: the drafts only, not live until someone publishes them).
``tree_restore`` makes a published version a tree's draft again, each node keeping its id.

The structure is declared once (``Document`` and the models it nests, pydantic): it checks a
document's keys and JSON types and yields the JSON Schema that ``manage.py export_form --schema``
prints for editors, with each node type's config keys. Records, runs and tasks are kept: runs are
pinned to their snapshots, and records keep the values of removed fields in their data.
"""

import decimal
import json
import re
from dataclasses import dataclass, field

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction
from pydantic import BaseModel, ConfigDict
from pydantic import Field as Schema
from pydantic import ValidationError as PydanticValidationError

from .engine.snapshot import tree_order
from .models import RECORD_UPDATE, InvalidTreeOperation, Node, TreeVersion, field_model, form_model, tree_nest
from .nodes import registry
from .retry import RetryPolicy
from .templating import validate_template
from .versions import DraftChanged, form_events, form_publish, tree_status

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
    published: dict = field(default_factory=dict)  # event name -> the TreeVersion the import published
    drafts: dict = field(default_factory=dict)  # (publish=False) event with unpublished changes -> live number or 0

    def summary(self, *, how_to_publish=""):
        """What the import did, one line per fact; ``how_to_publish`` follows the drafts' line when there are drafts."""
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
        if self.published:
            versions = ", ".join(f"{event} version {version.number}" for event, version in self.published.items())
            lines.append(f"Published (live for new submissions): {versions}.")
        if self.drafts:
            trees = ", ".join(
                f"{event} ({f'version {number} stays live' if number else 'never published'})"
                for event, number in self.drafts.items()
            )
            lines.append(f"Imported as drafts, not live until published: {trees}.")
            if how_to_publish:
                lines.append(how_to_publish)
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


def _node_doc(*, type, name, label, visible, config, retry):
    """A node of the form file, without its steps and error branch (a container gets an empty ``children``)."""
    item = {"type": type}
    if name:
        item["name"] = name
    if label:
        item["label"] = label
    if visible:
        item["visible"] = True
    item["config"] = config if isinstance(config, dict) else {}
    if retry.as_document() != RetryPolicy().as_document():
        item["retry"] = retry.as_document()
    try:
        is_container = registry.get(type).is_container
    except registry.UnknownNodeType:
        is_container = False
    if is_container:
        item["children"] = []
    return item


def _node_export(node):
    return _node_doc(
        type=node.type,
        name=node.name,
        label=node.label,
        visible=node.visible,
        config=node.config,
        retry=node.retry_policy,
    )


def snapshot_label(item):
    """The label a snapshot's node was given, or "" when it had none.

    A snapshot holds the label a node shows (``Node.display_label``: its label, else its name, else its
    type's label); a label that is just what the node would show without one is taken as none.
    """
    label = item.get("label") or ""
    if item.get("name"):
        return "" if label == item["name"] else label
    return "" if label == Node(type=item.get("type", "")).type_label else label


def _snapshot_export(nodes):
    items = []
    for node in nodes or []:
        item = _node_doc(
            type=node.get("type", ""),
            name=node.get("name", ""),
            label=snapshot_label(node),
            visible=node.get("visible", False),
            config=node.get("config"),
            retry=RetryPolicy.of_document(node.get("retry")),
        )
        if node.get("children"):
            item["children"] = _snapshot_export(node["children"])
        if node.get("on_error"):
            item["on_error"] = _snapshot_export(node["on_error"])
        items.append(item)
    return items


def _drafts_export(form):
    nodes = list(Node.objects.filter(form=form).order_by("path"))
    order = sorted({node.event for node in nodes}, key=lambda event: (event != RECORD_UPDATE, event))
    return {
        event: tree_nest([node for node in nodes if node.event == event], lambda node, parent: _node_export(node))
        for event in order
    }


def export_versions(form, versions=None):
    """The published version of each tree that an export writes: {event: TreeVersion}.

    ``versions`` chooses a version by number ({event: number}); every other tree is at its latest
    version. A tree never published, or whose latest version is empty, is left out (unless chosen).
    Raises LookupError, saying which versions there are, for a number that does not exist.
    """
    versions = dict(versions or {})
    chosen = {}
    for event in form_events(form) + sorted(set(versions) - set(form_events(form))):
        published = TreeVersion.objects.of_tree(form, event)
        if event in versions:
            version = published.filter(number=versions[event]).first()
            if version is None:
                numbers = sorted(published.values_list("number", flat=True))
                known = f"its versions are {', '.join(map(str, numbers))}" if numbers else "it was never published"
                raise LookupError(f"The {event} tree of “{form.slug}” has no version {versions[event]} ({known}).")
            chosen[event] = version
        else:
            version = published.first()
            if version is not None and version.snapshot:
                chosen[event] = version
    return chosen


def form_export(form, *, draft=False, versions=None):
    """The form, its fields, its waiting page and its event trees, as a JSON-ready dict.

    Each tree as its live version (the latest published), or the version ``versions`` names
    ({event: number}); ``draft=True``: the drafts (the Node rows), as the builder shows them.
    """
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
        "events": _drafts_export(form)
        if draft
        else {event: _snapshot_export(version.snapshot) for event, version in export_versions(form, versions).items()},
    }


def form_export_json(form, **options):
    return json.dumps(form_export(form, **options), indent=2, ensure_ascii=False) + "\n"


def export_notes(form, *, draft=False, versions=None):
    """What an export of the live versions leaves out: trees whose drafts have unpublished changes."""
    if draft:
        return []
    notes = []
    for event in form_events(form):
        status = tree_status(form=form, event=event)
        if not status.has_changes or event in (versions or {}):
            continue
        if status.is_live:
            notes.append(
                f"The {event} tree's draft has changes that are not published: the file holds "
                f"version {status.live.number} (export the draft with --draft)."
            )
        else:
            notes.append(f"The {event} tree was never published: left out (export the draft with --draft).")
    return notes


# ---------------------------------------------------------------------------------------------
# The format, declared: what each object holds, its JSON types and its defaults. One source for
# checking a document's structure and for the JSON Schema published for editors (``schema()``).


def _default(model, attr):
    return model._meta.get_field(attr).get_default()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FieldDoc(_Strict):
    """One field of the form; ``name`` is the key of its value in every record: never rename it."""

    name: str
    label: str = Schema(default="", description="Defaults to the name, capitalised.")
    type: str = Schema(default=_default(Field, "type"), json_schema_extra={"enum": list(Field.Type.values)})
    required: bool = _default(Field, "required")
    help_text: str = ""
    choices: list[str] = Schema(default_factory=list, description="For choice and multiple_choice fields.")
    min: int | float = Schema(default=None, description="For number fields.")
    max: int | float = Schema(default=None, description="For number fields.")
    max_length: int = None
    pattern: str = Schema(default="", description="A regular expression the value must match.")
    default: str = ""


class WaitingDoc(_Strict):
    """The waiting page: how often it polls, what it waits for, what it says at the end."""

    poll_seconds: int = Schema(default=_default(Form, "poll_seconds"), ge=1)
    wait_for: str = Schema(default=_default(Form, "wait_for"), json_schema_extra={"enum": list(Form.WaitFor.values)})
    wait_flag: str = Schema(default=_default(Form, "wait_flag"), description='Required when wait_for is "flag".')
    max_wait_seconds: int = _default(Form, "max_wait_seconds")
    title: str = _default(Form, "waiting_title")
    done_message: str = Schema(default=_default(Form, "done_message"), description="A template over the record.")
    done_redirect_url: str = _default(Form, "done_redirect_url")
    failed_message: str = Schema(default=_default(Form, "failed_message"), description="A template over the record.")


class FormDoc(_Strict):
    slug: str
    title: str
    description: str = _default(Form, "description")
    submit_label: str = _default(Form, "submit_label")
    is_published: bool = _default(Form, "is_published")
    collect_debug: bool = _default(Form, "collect_debug")
    fields: list[FieldDoc] = Schema(default_factory=list)
    waiting: WaitingDoc = Schema(default_factory=WaitingDoc)


class RetryDoc(_Strict):
    """How a failed step is tried again (see events.retry.RetryPolicy); left-out keys take the defaults."""

    max_attempts: int = RetryPolicy.attempts
    backoff_seconds: int = RetryPolicy.backoff_seconds
    backoff_max_seconds: int = RetryPolicy.backoff_max_seconds
    non_retryable: list[str] = Schema(default_factory=list, description="Beginnings of error messages not to retry.")


class NodeDoc(_Strict):
    """One node of an event tree. ``name`` identifies it in its tree (and keeps its id across imports)."""

    type: str
    name: str = ""
    label: str = ""
    visible: bool = False
    config: dict = Schema(default_factory=dict, description="The keys of its type's config form.")
    retry: RetryDoc = None
    children: list["NodeDoc"] = Schema(default_factory=list, description="Containers only.")
    on_error: list["NodeDoc"] = Schema(default_factory=list, description="The error branch.")


class Document(_Strict):
    """A form with its fields, its waiting page and its event trees."""

    form: FormDoc
    events: dict[str, list[NodeDoc]] = Schema(default_factory=dict, description="Event name → its tree.")


def schema():
    """The JSON Schema of the form file, with each node type's config keys (for editors and CI)."""
    document = Document.model_json_schema()
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "Form file"
    node = document["$defs"]["NodeDoc"]
    node["properties"]["type"]["enum"] = [cls.key for cls in registry.all_types()]
    node["allOf"] = [
        {"if": {"properties": {"type": {"const": cls.key}}}, "then": {"properties": {"config": _config_schema(cls)}}}
        for cls in registry.all_types()
    ]
    return document


def _config_schema(node_type):
    properties = {}
    for key, form_field in node_type.config_form.base_fields.items():
        kind = _config_kind(form_field)
        item = {"type": JSON_TYPES[kind]} if kind else {}
        if form_field.label:
            item["title"] = str(form_field.label)
        if form_field.help_text:
            item["description"] = str(form_field.help_text)
        properties[key] = item
    return {"type": "object", "properties": properties, "additionalProperties": False}


JSON_TYPES = {"string": "string", "boolean": "boolean", "integer": "integer", "number": "number"}


# ---------------------------------------------------------------------------------------------
# Import: the structure is checked by the declared schema, then what it cannot say (names that
# exist, values a model or a node type refuses, the tree's rules), everything into one list of
# problems with their paths; nothing is written unless there are none.


def document_parse(text):
    """JSON text (str or bytes) as a document; a FormFileError when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormFileError([("", f"not valid JSON: {exc}")]) from None


def _key_path(path, key):
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _path(loc):
    path = ""
    for key in loc:
        path = _key_path(path, key)
    return path


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


EXPECTED = {  # pydantic error type -> what the document should have held there
    "string_type": "a string",
    "bool_type": "true or false",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


MODEL_OF_KEY = {
    "form": FormDoc,
    "fields": FieldDoc,
    "waiting": WaitingDoc,
    "retry": RetryDoc,
    "children": NodeDoc,
    "on_error": NodeDoc,
    "events": NodeDoc,
}


def _model_at(loc):
    """The declared model of the object at ``loc`` (for an unknown key's list of known keys)."""
    model, after_events = Document, False
    for key in loc:
        if isinstance(key, int):
            continue
        if after_events:  # an event name: its tree is a list of NodeDoc
            after_events = False
            continue
        after_events = model is Document and key == "events"
        model = MODEL_OF_KEY[key]
    return model


def _structure_problems(error):
    """(path, message) for one of pydantic's errors, in the form file's words."""
    loc, kind = error["loc"], error["type"]
    # For a union (int | float) pydantic adds the member's name to the location.
    loc = tuple(key for key in loc if key not in ("int", "float"))
    if kind == "missing":
        return _path(loc), "required"
    if kind == "extra_forbidden":
        known = ", ".join(_model_at(loc[:-1]).model_fields)
        return _path(loc), f"unknown key (known keys: {known})"
    if kind in EXPECTED or kind in ("int_parsing", "float_parsing"):
        expected = EXPECTED.get(kind, "a number")
        if error["type"] == "float_type" and loc and loc[-1] not in ("min", "max"):
            expected = "a number"
        value = error["input"]
        hint = " (leave the key out instead)" if value is None else ""
        return _path(loc), f"expected {expected}, got {_describe(value)}{hint}"
    if kind == "greater_than_equal":
        return _path(loc), f"must be at least {error['ctx']['ge']}"
    return _path(loc), error["msg"]


@dataclass
class _Plan:
    slug: str
    form_attrs: dict
    fields: list  # of attribute dicts, in order
    events: dict  # event name -> list of node plans


FORM_ATTRS = {
    "slug": "slug",
    "title": "title",
    "description": "description",
    "submit_label": "submit_label",
    "is_published": "is_published",
    "collect_debug": "collect_debug",
}
WAITING_ATTRS = {
    "poll_seconds": "poll_seconds",
    "wait_for": "wait_for",
    "wait_flag": "wait_flag",
    "max_wait_seconds": "max_wait_seconds",
    "title": "waiting_title",
    "done_message": "done_message",
    "done_redirect_url": "done_redirect_url",
    "failed_message": "failed_message",
}
FIELD_ATTRS = {
    "name": "name",
    "label": "label",
    "type": "type",
    "required": "required",
    "help_text": "help_text",
    "choices": "choices",
    "min": "min_value",
    "max": "max_value",
    "max_length": "max_length",
    "pattern": "pattern",
    "default": "default",
}
CHOICE_TYPES = (Field.Type.CHOICE, Field.Type.MULTIPLE_CHOICE)
NAME = re.compile(r"[-a-zA-Z0-9_]{1,100}")


class _Checker:
    """What the schema cannot say, checked over the document with every bad part already reported."""

    def __init__(self, structure):
        self.problems = list(structure)
        self.bad = {path for path, _message in structure}

    def problem(self, path, message):
        self.problems.append((path, message))

    def sound(self, path):
        """Nothing at or under ``path`` was reported by the schema."""
        return not any(bad == path or bad.startswith(path + ".") or bad.startswith(path + "[") for bad in self.bad)

    @staticmethod
    def read(model, raw):
        """``raw``'s values over ``model``'s defaults (None for a missing required key), unchecked:
        the schema has reported what is wrong."""
        values = {}
        for name, declared in model.model_fields.items():
            if isinstance(raw, dict) and name in raw:
                values[name] = raw[name]
            else:
                values[name] = None if declared.is_required() else declared.get_default(call_default_factory=True)
        return model.model_construct(**values)

    def model_errors(self, instance, paths):
        """Run the model's own field validation; report it under ``paths`` (attribute -> path)."""
        try:
            instance.full_clean(
                exclude=["form"] if isinstance(instance, Field) else None,
                validate_unique=False,
                validate_constraints=False,
            )
        except ValidationError as exc:
            for attr, messages in exc.message_dict.items():
                path = paths.get(attr, "")
                if attr in paths and not self.sound(path):
                    continue
                for message in messages:
                    self.problem(path, message)

    # -- form ----------------------------------------------------------------------------------

    def check_document(self, raw):
        if not isinstance(raw, dict) or not isinstance(raw.get("form"), dict):
            return None
        form_attrs, fields, form_fields = self.check_form(raw["form"], "form")
        events = raw.get("events")
        events = self.check_events(events, "events", form_fields) if isinstance(events, dict) else {}
        return _Plan(slug=form_attrs["slug"], form_attrs=form_attrs, fields=fields, events=events)

    def check_form(self, raw, path):
        head = self.read(FormDoc, raw)
        waiting_path = _key_path(path, "waiting")
        waiting = self.read(WaitingDoc, raw.get("waiting") if isinstance(raw.get("waiting"), dict) else {})
        attrs = {attr: getattr(head, key) for key, attr in FORM_ATTRS.items()}
        attrs |= {attr: getattr(waiting, key) for key, attr in WAITING_ATTRS.items()}
        paths = {attr: _key_path(path, key) for key, attr in FORM_ATTRS.items()}
        paths |= {attr: _key_path(waiting_path, key) for key, attr in WAITING_ATTRS.items()}
        if "slug" in raw and "title" in raw:
            self.model_errors(Form(**attrs), paths)
        if attrs["wait_for"] == Form.WaitFor.FLAG and not attrs["wait_flag"] and self.sound(paths["wait_flag"]):
            self.problem(paths["wait_flag"], 'required when wait_for is "flag"')
        for attr in ("done_message", "failed_message"):
            try:
                validate_template(attrs[attr])
            except (ValidationError, TypeError) as exc:
                if self.sound(paths[attr]):
                    self.problem(paths[attr], " ".join(getattr(exc, "messages", [str(exc)])))

        raw_fields = raw.get("fields") if isinstance(raw.get("fields"), list) else []
        fields = self.check_fields(raw_fields, _key_path(path, "fields"))
        # What config forms check field names against: the document's fields, name → type.
        form_fields = {field_attrs["name"]: field_attrs["type"] for field_attrs in fields}
        return attrs, fields, form_fields

    def check_fields(self, raw_fields, path):
        fields, seen = [], {}
        for index, raw in enumerate(raw_fields):
            item_path = f"{path}[{index}]"
            if not isinstance(raw, dict):
                continue
            doc = self.read(FieldDoc, raw)
            paths = {attr: _key_path(item_path, key) for key, attr in FIELD_ATTRS.items()}
            attrs = {attr: getattr(doc, key) for key, attr in FIELD_ATTRS.items()}
            if not attrs["label"] and isinstance(attrs.get("name"), str):
                attrs["label"] = attrs["name"].replace("_", " ").capitalize()
            for attr in ("min_value", "max_value"):
                if isinstance(attrs[attr], (int, float)) and not isinstance(attrs[attr], bool):
                    attrs[attr] = decimal.Decimal(str(attrs[attr]))
                elif attrs[attr] is not None:
                    attrs[attr] = None  # reported by the schema
            if attrs["type"] not in Field.Type.values and self.sound(paths["type"]):
                known = ", ".join(Field.Type.values)
                self.problem(paths["type"], f'unknown type "{attrs["type"]}" (known types: {known})')
            if attrs["type"] in CHOICE_TYPES and not attrs["choices"] and self.sound(paths["choices"]):
                self.problem(paths["choices"], f"a {attrs['type']} field needs at least one choice")
            if None not in (attrs["min_value"], attrs["max_value"]) and attrs["min_value"] > attrs["max_value"]:
                self.problem(paths["max_value"], "is smaller than min")
            if attrs["pattern"] and isinstance(attrs["pattern"], str):
                try:
                    re.compile(attrs["pattern"])
                except re.error as exc:
                    self.problem(paths["pattern"], f"not a valid regular expression: {exc}")
                    self.bad.add(paths["pattern"])
            if self.sound(paths["name"]) and "name" in raw:
                self.model_errors(
                    Field(**{**attrs, "choices": attrs["choices"] if self.sound(paths["choices"]) else []}),
                    {attr: p for attr, p in paths.items() if attr != "type" or self.sound(p)}
                    | (
                        {"type": paths["type"]}
                        if attrs["type"] in Field.Type.values
                        else {"type": item_path + "\0type"}
                    ),
                )
                name = raw["name"]
                if name in seen:
                    self.problem(paths["name"], f'duplicate field name "{name}" (also {seen[name]})')
                else:
                    seen[name] = item_path
                fields.append(attrs)
        # A model error about a type already reported as unknown is not a second problem.
        self.problems = [(p, m) for p, m in self.problems if "\0" not in p]
        return fields

    # -- event trees ---------------------------------------------------------------------------

    def check_events(self, raw_events, path, form_fields):
        events = {}
        for event, nodes in raw_events.items():
            event_path = _key_path(path, event)
            if not NAME.fullmatch(event):
                self.problem(event_path, "an event name is 1 to 100 letters, digits, underscores or hyphens")
            if not isinstance(nodes, list):
                continue  # reported by the schema
            names = {}
            plans = [
                self.check_node(raw, f"{event_path}[{index}]", form_fields, names) for index, raw in enumerate(nodes)
            ]
            events[event] = [plan for plan in plans if plan is not None]
        return events

    def check_node(self, raw, path, form_fields, names, *, branch=Node.Branch.MAIN):
        if not isinstance(raw, dict):
            return None
        doc = self.read(NodeDoc, raw)
        node_type = None
        if isinstance(doc.type, str) and "type" in raw:
            try:
                node_type = registry.get(doc.type)
            except registry.UnknownNodeType:
                known = ", ".join(cls.key for cls in registry.all_types())
                self.problem(_key_path(path, "type"), f'unknown node type "{doc.type}" (known types: {known})')

        name = doc.name if isinstance(doc.name, str) else ""
        if name:
            if not NAME.fullmatch(name):
                self.problem(_key_path(path, "name"), "a node name is 1 to 100 letters, digits, underscores or hyphens")
            if name in names:
                self.problem(_key_path(path, "name"), f'duplicate node name "{name}" in this tree (also {names[name]})')
            else:
                names[name] = path
        label = doc.label if isinstance(doc.label, str) else ""
        label_limit = Node._meta.get_field("label").max_length
        if len(label) > label_limit:
            self.problem(_key_path(path, "label"), f"at most {label_limit} characters (it has {len(label)})")

        config = doc.config if isinstance(doc.config, dict) else {}
        if node_type is not None and self.sound(_key_path(path, "config")):
            config = self.check_config(node_type, config, _key_path(path, "config"), form_fields)

        retry = {}
        if isinstance(raw.get("retry"), dict) and self.sound(_key_path(path, "retry")):
            policy = RetryPolicy.of_document(raw["retry"])
            for key, message in policy.problems().items():
                self.problem(_key_path(_key_path(path, "retry"), key), message)
            retry = policy.node_fields()

        children_path, on_error_path = _key_path(path, "children"), _key_path(path, "on_error")
        raw_children = raw.get("children") if isinstance(raw.get("children"), list) else []
        raw_on_error = raw.get("on_error") if isinstance(raw.get("on_error"), list) else []
        children = [
            self.check_node(child, f"{children_path}[{index}]", form_fields, names)
            for index, child in enumerate(raw_children)
        ]
        on_error = [
            self.check_node(child, f"{on_error_path}[{index}]", form_fields, names, branch=Node.Branch.ON_ERROR)
            for index, child in enumerate(raw_on_error)
        ]
        if node_type is not None and raw_children and not node_type.is_container:
            containers = ", ".join(cls.key for cls in registry.all_types() if cls.is_container)
            self.problem(
                children_path,
                f'a node of type "{node_type.key}" cannot have children; only containers ({containers}) can',
            )
        if node_type is not None and raw_on_error:
            # The tree's own rule decides (NodeManager.check_parent), so the import never accepts
            # a tree that the manager would refuse half-way through writing it.
            parent = Node(type=node_type.key, label=label or name or f"This {node_type.label} node", branch=branch)
            try:
                Node.objects.check_parent(Node(type=node_type.key, branch=Node.Branch.ON_ERROR), parent)
            except InvalidTreeOperation as exc:
                self.problem(on_error_path, f"an error branch is not allowed here: {' '.join(exc.messages)}")
        return {
            "type": doc.type if isinstance(doc.type, str) else "",
            "name": name,
            "label": label,
            "visible": doc.visible if isinstance(doc.visible, bool) else False,
            "config": config,
            "retry": retry,
            "children": [child for child in children if child is not None],
            "on_error": [child for child in on_error if child is not None],
        }

    def check_config(self, node_type, config, path, form_fields):
        """The config, checked by the type's own form; JSON types first, so its messages are about values."""
        config_form = node_type.config_form(form_fields=form_fields)
        bad = set()
        for key, value in config.items():
            if key not in config_form.fields:
                known = ", ".join(config_form.fields) or "none"
                self.problem(_key_path(path, key), f"unknown key for {node_type.key} (known keys: {known})")
                continue
            kind = _config_kind(config_form.fields[key])
            if kind and value is not None and not KINDS[kind](value):
                self.problem(_key_path(path, key), f"expected {EXPECTED_KIND[kind]}, got {_describe(value)}")
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
                        message = message[len(label) + 2 :]
                    self.problem(where, message)
            return config


KINDS = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}
EXPECTED_KIND = {"string": "a string", "boolean": "true or false", "integer": "a whole number", "number": "a number"}


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
    if isinstance(
        form_field, (forms.CharField, forms.ChoiceField, forms.DateField, forms.DateTimeField, forms.TimeField)
    ):
        return "string"
    return None


def form_check(document):
    """Check a whole document; a FormFileError lists every problem. Returns the plan to write."""
    try:
        Document.model_validate(document)
        structure = []
    except PydanticValidationError as exc:
        structure = [_structure_problems(error) for error in exc.errors()]
    checker = _Checker(structure)
    plan = checker.check_document(document)
    if checker.problems or plan is None:
        raise FormFileError(checker.problems or [("", "nothing to import")])
    return plan


class KeptIds:
    """The ids the nodes of a tree had before an import, so that a re-imported node keeps its own.

    A named node is matched by its name within the tree; an unnamed one by where it stands: the
    same type, the n-th unnamed node of that type among the steps (or error steps) of the same,
    matched, parent. A tree re-imported from its own export is the same tree, node for node.
    """

    def __init__(self, nodes=()):
        self.named, self.unnamed = {}, {}
        by_path, seen = {}, {}
        for node in nodes:  # in path order: a parent before its children
            by_path[node.path] = node.pk
            if node.name:
                self.named[node.name] = node.pk
                continue
            parent = by_path.get(node.path[: -Node.steplen])
            ordinal = seen[(parent, node.branch, node.type)] = seen.get((parent, node.branch, node.type), -1) + 1
            self.unnamed[(parent, node.branch, node.type, ordinal)] = node.pk
        self.placed = {}

    def id_for(self, plan, parent, branch):
        if plan["name"]:
            return self.named.get(plan["name"])
        key = (parent.pk if parent is not None else None, branch, plan["type"])
        ordinal = self.placed[key] = self.placed.get(key, -1) + 1
        return self.unnamed.get((*key, ordinal))


def _node_create(form, event, plan, kept, *, parent=None, branch=Node.Branch.MAIN):
    node = Node(
        form=form,
        event=event,
        type=plan["type"],
        name=plan["name"],
        label=plan["label"],
        visible=plan["visible"],
        config=plan["config"],
        branch=branch,
        **plan["retry"],
    )
    if plan.get("id") is not None:
        node.pk = plan["id"]  # a version restored: each node is the one it was
    elif kept is not None:
        node.pk = kept.id_for(plan, parent, branch)  # re-imported: admin links and runs' references hold
    node = Node.objects.add_root(instance=node) if parent is None else Node.objects.add_child(parent, instance=node)
    count = 1
    for child in plan["children"]:
        count += _node_create(form, event, child, kept, parent=node)
    for child in plan["on_error"]:
        count += _node_create(form, event, child, kept, parent=node, branch=Node.Branch.ON_ERROR)
    return count


def form_import_result(document, *, publish=True, user=None, note=""):
    """Import a form file (a parsed document); see the module docstring. Raises FormFileError.

    The trees are written as drafts; ``publish`` then publishes each one that changed (by ``user``,
    with ``note``), in the same transaction.
    """
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

            # Nodes keep their ids: a tree re-imported from its own export is the same tree.
            old = {}
            for node in (
                Node.objects.filter(form=form)
                .order_by("event", "path")
                .only("pk", "event", "path", "name", "branch", "type")
            ):
                old.setdefault(node.event, []).append(node)
            kept = {event: KeptIds(nodes) for event, nodes in old.items()}
            Node.objects.filter(form=form).delete()
            counts = {}
            for event, nodes in plan.events.items():
                ids = kept.get(event, KeptIds())
                total = sum(_node_create(form, event, node, ids) for node in nodes)
                if total:
                    counts[event] = total
            published, drafts = {}, {}
            if publish:
                published = form_publish(form=form, user=user, note=note or "Imported from a form file.")
            else:
                for event in form_events(form):
                    status = tree_status(form=form, event=event)
                    if status.has_changes:
                        drafts[event] = status.live.number if status.is_live else 0
    except InvalidTreeOperation as exc:
        raise FormFileError([("events", " ".join(exc.messages))]) from None
    return ImportResult(
        form=form,
        created=created,
        field_count=len(plan.fields),
        node_counts=counts,
        removed_fields=removed,
        published=published,
        drafts=drafts,
    )


def form_import(document, **options):
    """Import a form file (a parsed document) and return the Form. Raises FormFileError."""
    return form_import_result(document, **options).form


def _snapshot_plans(nodes, taken):
    """A snapshot's nodes as plans for ``_node_create``, each keeping its id unless ``taken`` holds it."""
    return [
        {
            "id": None if node["id"] in taken else node["id"],
            "type": node.get("type", ""),
            "name": node.get("name", ""),
            "label": snapshot_label(node),
            "visible": node.get("visible", False),
            "config": node.get("config") if isinstance(node.get("config"), dict) else {},
            "retry": RetryPolicy.of_document(node.get("retry")).node_fields(),
            "children": _snapshot_plans(node.get("children"), taken),
            "on_error": _snapshot_plans(node.get("on_error"), taken),
        }
        for node in nodes or []
    ]


def tree_restore(*, version, expect: str | None = None):
    """Make ``version`` the draft of its tree again: the tree's Node rows are rebuilt from its snapshot.

    Each node keeps the id it had in the version, so links to it and runs' references hold (an id
    that another tree's node holds now, which a tree's own ids never are, is given up for a new one).
    The draft's unpublished changes are lost; nothing is published. Returns the number of nodes.
    ``expect``: the ``TreeStatus.token`` the admin confirmed with; when the draft or the live version
    changed since, DraftChanged is raised and nothing is changed (the admin would lose edits unseen).
    Raises InvalidTreeOperation when the snapshot cannot be a tree any more (a container whose type
    is no longer installed).
    """
    form, event = version.form, version.event
    ids = [node["id"] for node in tree_order(version.snapshot)]
    with transaction.atomic():
        if expect is not None and expect != tree_status(form=form, event=event).token:
            raise DraftChanged("The draft or the live version changed since you looked at it: look again.")
        taken = set(Node.objects.filter(pk__in=ids).exclude(form=form, event=event).values_list("pk", flat=True))
        Node.objects.filter(form=form, event=event).delete()
        try:
            return sum(_node_create(form, event, plan, {}) for plan in _snapshot_plans(version.snapshot, taken))
        except registry.UnknownNodeType as exc:
            raise InvalidTreeOperation(f"Version {version.number} cannot be restored: {exc}") from None


__all__ = [
    "Document",
    "FormFileError",
    "ImportResult",
    "document_parse",
    "form_check",
    "form_export",
    "form_export_json",
    "form_import",
    "form_import_result",
    "export_notes",
    "export_versions",
    "schema",
    "tree_restore",
]
