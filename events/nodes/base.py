"""What every node type is, and what the engine hands it."""

import datetime
import decimal
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from .. import templating


class NodeError(Exception):
    """An action failed; the message is shown to admins and kept in the task."""


@dataclass
class Waiting:
    """What an action returns when it has sent its request and now waits for a callback.

    ``output`` becomes the task's output (a callback's output is merged over it).
    The engine suspends the sequence; a SUCCESS callback resumes it at the next sibling.
    """

    output: dict = field(default_factory=dict)


class ConfigForm(forms.Form):
    """Base for config forms. ``tree_form`` (the Form model, when known) lets a type check field names."""

    def __init__(self, *args, tree_form=None, **kwargs):
        self.tree_form = tree_form
        super().__init__(*args, **kwargs)

    def to_config(self):
        """cleaned_data as JSON: dates as ISO text, decimals as text, empty optional values left out."""
        config = {}
        for key, value in self.cleaned_data.items():
            if value in (None, "", [], {}):
                continue
            if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
                value = value.isoformat()
            elif isinstance(value, decimal.Decimal):
                value = str(value)
            config[key] = value
        return config


@dataclass
class NodeContext:
    """What an executing node sees. Built by the engine for one task."""

    run: Any
    task: Any
    record: Any
    node: dict
    outputs: dict = field(default_factory=dict)
    logs: list = field(default_factory=list)
    # Set by the engine: moves the task to "awaiting" and returns its callback credentials.
    awaiter: Any = None

    @property
    def config(self):
        return self.node.get("config", {})

    def template_context(self):
        return {
            "record": {**self.record.data, "id": self.record.pk, "created_at": self.record.created_at},
            "flags": self.record.flags,
            "properties": self.run.properties,
            "tasks": self.outputs,
            "run": {"id": str(self.run.pk), "reference": self.run.reference, "event": self.run.event, "subtext": self.run.subtext},
            "site": {"public_url": settings.EVENTS_PUBLIC_URL.rstrip("/")},
        }

    def render(self, value, extra=None):
        """Render a config value (strings as templates, lists and dicts item by item)."""
        context = {**self.template_context(), **(extra or {})}

        def walk(item):
            if isinstance(item, str):
                return templating.render(item, context)
            if isinstance(item, list):
                return [walk(element) for element in item]
            if isinstance(item, dict):
                return {key: walk(element) for key, element in item.items()}
            return item

        return walk(value)

    def await_callback(self, *, timeout_seconds):
        """Before sending: make the task wait for a callback. Returns {"task_id", "url", "token"}.

        Call it before the request goes out, so that a callback that comes back
        at once finds the task already awaiting.
        """
        return self.awaiter(timeout_seconds=timeout_seconds)

    def log(self, line):
        from ..models import RunTask

        self.logs.append(RunTask.log_line(line))


class NodeType:
    """One kind of node. Subclasses set key, label, config_form and a docstring.

    Actions implement ``execute(ctx) -> dict | None`` (the task's output) and
    raise NodeError to fail. Containers set ``is_container`` and implement
    ``due_at(ctx)``: when their children may start. Neither touches the queue
    or commits a transaction: the engine does.
    """

    key: ClassVar[str]  # stored in the database: never rename
    label: ClassVar[str]
    config_form: ClassVar[type[ConfigForm]]
    is_container: ClassVar[bool] = False

    @classmethod
    def clean_config(cls, data, *, tree_form=None):
        """Validate raw config; return it normalised, or raise ValidationError naming the fields."""
        form = cls.config_form(data=data or {}, tree_form=tree_form)
        if not form.is_valid():
            raise ValidationError(
                {name: [f"{form.fields[name].label or name}: {message}" if name in form.fields else message
                        for message in messages]
                 for name, messages in form.errors.items()}
            )
        return form.to_config()

    @classmethod
    def describe(cls, config):
        """One line for the tree overview."""
        return ""

    def execute(self, ctx: NodeContext):
        raise NotImplementedError

    def due_at(self, ctx: NodeContext):
        raise NotImplementedError
