"""What every node type is, and what the engine hands it."""

import datetime
import decimal
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from .. import effects, templating
from ..storable import log_line

logger = logging.getLogger("events.nodes")

# True while the web request that received a submission walks its run's inline phase (see
# ``steps_in_web_request``); a worker never sets it. Steps then bound their waits (NodeContext.bounded_wait).
_in_web_request = ContextVar("events_in_web_request", default=False)


@contextmanager
def steps_in_web_request() -> Iterator[None]:
    """Steps executed inside this block run in a web request: each wait of theirs is bounded.

    The bound is EVENTS_INLINE_STEP_MAX_SECONDS, kept well below the web server's timeout
    (EVENTS_WEB_TIMEOUT_SECONDS, gunicorn's --timeout), so that a slow step fails or gives up
    waiting instead of the server killing the request. Child runs started from here
    (trigger_event) are inside the block too.
    """
    token = _in_web_request.set(True)
    try:
        yield
    finally:
        _in_web_request.reset(token)


class NodeError(Exception):
    """An action failed; the message is shown to admins and kept in the task.

    ``retryable=False``: trying again cannot help (an address the HTTP action may not
    reach, a field the form does not have), so the step fails at once, whatever
    attempts its retry policy has left.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Waiting:
    """What an action returns when it has sent its request and now waits for a callback.

    ``output`` becomes the task's output (a callback's output is merged over it).
    The engine suspends the sequence; a SUCCESS callback resumes it at the next sibling.
    """

    output: dict = field(default_factory=dict)


class TypedText(str):
    """What an admin typed into a JSON field, kept as typed (see JSONObjectField)."""


class JSONObjectField(forms.JSONField):
    """A JSON object typed into a text area.

    Empty when there is none (Django's JSONField shows the text ``null``), and after a failed
    validation it shows exactly what was typed, not a re-serialisation of it.
    """

    widget = forms.Textarea(attrs={"rows": 3})

    def bound_data(self, data: Any, initial: Any) -> Any:
        if self.disabled or data is None:
            return super().bound_data(data, initial)
        return TypedText(data)

    def prepare_value(self, value: Any) -> Any:
        if value is None or isinstance(value, TypedText):
            return "" if value is None else str(value)
        return super().prepare_value(value)


def flat_choices(choices: Any) -> Iterator[tuple[Any, Any]]:
    for value, label in choices:
        if isinstance(label, (list, tuple)):
            yield from flat_choices(label)
        else:
            yield value, label


class FieldNameSelect(forms.Select):
    """A select of the form's fields that still shows a stored name the form does not have (any more)."""

    def optgroups(self, name: str, value: list[Any], attrs: dict[str, Any] | None = None) -> Any:
        known = {str(choice) for choice, _ in flat_choices(self.choices)}
        missing = [item for item in value if item not in (None, "") and str(item) not in known]
        if missing:
            self.choices = [*self.choices, *((item, f"{item} ({self.missing_note(str(item))})") for item in missing)]
        return super().optgroups(name, value, attrs)

    @staticmethod
    def missing_note(item: str) -> str:
        return "no step of this form sets it" if item.startswith("flags.") else "not a field of this form"


class ConfigForm(forms.Form):
    """Base for config forms.

    ``form_fields`` maps the names of the form's fields to their types (``{"email": "email", ...}``),
    when known, so that a type can check the field names it is given: the admin passes the form's
    fields, the form file the fields of its document. ``None``: not known, names are not checked.
    ``form_flags``: the flags the form's trees set (their names), when known: the admin passes them
    so that a field naming a flag can offer them. Neither changes what validates, only how a
    field that names a form field is shown (``choose_form_field``).
    """

    # Config fields the admin lays out as the rows of a table, added and removed in place: a row's
    # columns are the fields ``<column>_<n>`` for n = 1 … row_count (a condition's rules).
    row_label: ClassVar[str] = ""
    row_columns: ClassVar[tuple[str, ...]] = ()
    row_count: ClassVar[int] = 0
    # Fields most nodes leave alone: the admin shows them folded away, unless one is set.
    advanced_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *args: Any,
        form_fields: Mapping[str, str] | None = None,
        form_flags: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.form_fields = form_fields
        self.form_flags = sorted(set(form_flags or ()))
        super().__init__(*args, **kwargs)

    def unknown_field(self, name: str) -> bool:
        """True when the form's fields are known and ``name`` is not one of them."""
        return self.form_fields is not None and name not in self.form_fields

    def choose_form_field(
        self, name: str, *, types: Iterable[str] | None = None, flags: bool = False, empty_label: str = "---------"
    ) -> None:
        """Show config field ``name`` as a select of the form's fields (of ``types`` only, if given),
        and of ``flags.<name>`` for the form's flags when ``flags``. Only when the form's fields are
        known; the field's own validation is unchanged."""
        if self.form_fields is None:
            return
        wanted = None if types is None else set(types)
        fields = [(key, f"{key} ({kind})") for key, kind in self.form_fields.items() if not wanted or kind in wanted]
        choices = [("", empty_label)]
        if not flags:
            choices += fields
        else:
            choices += [("Fields", fields)] if fields else []
            if self.form_flags:
                choices.append(("Flags", [(f"flags.{flag}", f"flags.{flag}") for flag in self.form_flags]))
        field = self.fields[name]
        field.widget = FieldNameSelect(choices=choices)
        field.widget.is_required = field.required

    def to_config(self) -> dict[str, Any]:
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


class ContainerConfig(ConfigForm):
    """The options every deferred container takes (from the Run In Background seed)."""

    advanced_fields = ("event_type", "event_properties", "collect_debug")

    event_type = forms.SlugField(
        label="Event type",
        required=False,
        max_length=100,
        help_text="Record this branch as a run of its own, under this event name.",
    )
    event_properties = JSONObjectField(
        label="Event properties",
        required=False,
        help_text='A JSON object the branch sees as its properties (values may be templates): {"source": "web"}.',
    )
    collect_debug = forms.BooleanField(
        label="Collect debug traces",
        required=False,
        help_text="Store each step's rendered config, inputs, output and timing (costs storage).",
    )

    def clean_event_properties(self) -> dict[str, Any] | None:
        value = self.cleaned_data.get("event_properties")
        if value in (None, ""):
            return None
        if not isinstance(value, dict):
            raise forms.ValidationError('Give the properties as a JSON object: {"name": "value"}.')
        return value

    def container_options(self) -> dict[str, Any]:
        """The options as stored: only those that are set."""
        options = {}
        for key in ("event_type", "event_properties", "collect_debug"):
            if self.cleaned_data.get(key):
                options[key] = self.cleaned_data[key]
        return options


@dataclass
class NodeContext:
    """What an executing node sees. Built by the engine for one task."""

    # The Run, RunTask and record (events.models imports this package, so they are not named here).
    run: Any
    task: Any
    record: Any
    node: dict[str, Any]
    outputs: Mapping[str, Any] = field(default_factory=dict)
    logs: list[dict[str, str]] = field(default_factory=list)
    # Set by the engine: moves the task to "awaiting" and returns its callback credentials.
    awaiter: Callable[..., dict[str, str]] | None = None
    # Set by the engine: fires another event of the form for this record.
    trigger: Callable[..., dict[str, str]] | None = None
    # In an error branch: {"message", "type", "node", "payload"} of the step that failed.
    error: dict[str, Any] | None = None

    @property
    def config(self) -> dict[str, Any]:
        return self.node.get("config", {})

    def template_context(self) -> dict[str, Any]:
        return {
            "record": {**self.record.data, "id": self.record.pk, "created_at": self.record.created_at},
            "flags": self.record.flags,
            "properties": self.run.properties,
            "tasks": self.outputs,
            "run": {
                "id": str(self.run.pk),
                "reference": self.run.reference,
                "event": self.run.event,
                "subtext": self.run.subtext,
            },
            "site": {"public_url": settings.EVENTS_PUBLIC_URL.rstrip("/")},
            "error": self.error or {},
        }

    def render(self, value: Any, extra: Mapping[str, Any] | None = None) -> Any:
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

    def await_callback(self, *, timeout_seconds: float) -> dict[str, str]:
        """Before sending: make the task wait for a callback. Returns {"task_id", "url", "token"}.

        Call it before the request goes out, so that a callback that comes back
        at once finds the task already awaiting.
        """
        return self.awaiter(timeout_seconds=timeout_seconds)

    def trigger_event(self, *, event: str, properties: dict[str, Any] | None) -> dict[str, str]:
        """Fire ``event`` for this record as a child run; returns {"run_id", "event", "status"}."""
        return self.trigger(event=event, properties=properties)

    def log(self, line: str) -> None:
        self.logs.append(log_line(line))

    # A step's effects outside our database go through events.effects: a test run captures them.

    def send_mail(self, message: Any) -> None:
        """Send one ``django.core.mail.EmailMessage`` through Django's mail framework (a test run captures it)."""
        effects.send_mail(message, ctx=self)

    def outbound_request(self, method: str, url: str, **options: Any) -> Any:
        """One outbound HTTP request through ``events.outbound.request`` (same options, same Answer).

        A test run answers it with a canned response instead, and nothing is sent.
        """
        return effects.http_request(method, url, ctx=self, **options)

    def now(self) -> datetime.datetime:
        """The time now: a test run's own clock, which fast-forwards through delays, backoffs and pauses."""
        return effects.now()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a pause). In a test run the clock moves on instead and nothing waits."""
        effects.sleep(seconds)

    def wait_limit(self) -> float | None:
        """The longest one wait of this step may last, in seconds: EVENTS_INLINE_STEP_MAX_SECONDS while it
        runs in a web request (``steps_in_web_request``), else None (no bound but its own config's)."""
        return settings.EVENTS_INLINE_STEP_MAX_SECONDS if _in_web_request.get() else None

    def bounded_wait(self, seconds: float, *, what: str) -> float:
        """``seconds`` of waiting (``what``: "the pause", "the read timeout"), cut to ``wait_limit()``.

        A cut is said in the step's log and the ``events.nodes`` log: the admin configured longer.
        """
        limit = self.wait_limit()
        if limit is None or seconds <= limit:
            return seconds
        note = (
            f"{what} cut from {seconds:g} s to {limit:g} s: this step runs in the submit request "
            "(EVENTS_INLINE_STEP_MAX_SECONDS); put it in a Background container to wait longer"
        )
        self.log(note)
        logger.info("Task %s: %s", self.task.pk, note)
        return limit


class NodeType:
    """One kind of node. Subclasses set key, label, config_form and a docstring.

    Actions implement ``execute(ctx) -> dict | None`` (the task's output) and
    raise NodeError to fail. Deferred containers set ``is_container`` and
    ``is_deferred`` and implement ``due_at(ctx)``: when their children may
    start. Inline containers (condition) implement ``holds(ctx)``. Markers set
    ``is_marker``. None of them touches the queue or commits a transaction:
    the engine does.
    """

    key: ClassVar[str]  # stored in the database: never rename
    label: ClassVar[str]
    config_form: ClassVar[type[ConfigForm]]
    is_container: ClassVar[bool] = False  # may hold steps (its "children")
    is_deferred: ClassVar[bool] = False  # a container whose children leave the walk for the queue
    is_marker: ClassVar[bool] = False  # neither action nor container: changes how its sequence runs
    # Whether ``execute`` has effects outside our database (mail, HTTP, time spent waiting). The
    # engine commits before such a step runs, so nothing irreversible happens inside an open
    # transaction; a step that only writes our database runs inside the walk's transaction and
    # commits together with its task's outcome. Unknown types are assumed to reach outside.
    reaches_outside: ClassVar[bool] = True
    # A marker that sends every later sibling of its sequence to the background (go_async): in the
    # request, the engine hands the rest of the sequence to the queue; the overview shows them so.
    backgrounds_later_siblings: ClassVar[bool] = False

    @classmethod
    def clean_config(
        cls, data: Mapping[str, Any] | None, *, form_fields: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Validate raw config; return it normalised, or raise ValidationError naming the fields.

        ``form_fields``: the form's field names and types, when known (see ConfigForm).
        """
        form = cls.config_form(data=data or {}, form_fields=form_fields)
        if not form.is_valid():
            raise ValidationError(
                {
                    name: [
                        f"{form.fields[name].label or name}: {message}" if name in form.fields else message
                        for message in messages
                    ]
                    for name, messages in form.errors.items()
                }
            )
        return form.to_config()

    @classmethod
    def describe(cls, config: dict[str, Any]) -> str:
        """One line for the tree overview."""
        return ""

    @classmethod
    def flags_set(cls, config: dict[str, Any]) -> list[str]:
        """The names of the record flags a node with this config sets (the admin offers them to conditions)."""
        return []

    @classmethod
    def mode(cls, config: dict[str, Any], *, in_background: bool) -> str:
        """How a node of this type runs, in the words of the tree overview.

        ``in_background``: its sequence runs in a worker (under a deferred container,
        or after a go_async marker). Actions run "inline" or "in background"; a
        deferred container says when its steps run; an inline container (a
        condition) says where it is tested.
        """
        where = "in background" if in_background else "inline"
        if cls.is_deferred:
            return "background"
        if cls.is_container:
            return f"{cls.label.lower()}, {where}"
        if cls.is_marker:
            return "marker"
        return where

    @classmethod
    def test_run_answers(cls, config: dict[str, Any]) -> tuple[str, ...]:
        """What a test run answers for a node with this config, in place of the world outside: "response"
        (its HTTP request gets a canned response) and "callback" (it waits for a callback, which a canned
        one answers). The test-run page offers those per node; empty for most types."""
        return ()

    @classmethod
    def settled_output(cls, *, held: bool) -> dict[str, Any]:
        """An inline container's output once its steps are settled: ``held`` says whether they ran."""
        return {}

    def execute(self, ctx: NodeContext) -> dict[str, Any] | Waiting | None:
        raise NotImplementedError

    def due_at(self, ctx: NodeContext) -> datetime.datetime:
        """A deferred container: when its steps may start (an aware datetime; now or earlier: at once)."""
        raise NotImplementedError

    def holds(self, ctx: NodeContext) -> bool:
        """An inline container: whether its steps run now (True) or are skipped (False)."""
        raise NotImplementedError
