import datetime

from django import forms
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from .. import effects
from .base import ContainerConfig, NodeError, NodeType
from .registry import register

RULES = {
    "now": "now",
    "after": "a duration after the submit",
    "at": "at a date and time",
    "field": "a date field of the record, plus or minus an offset",
    "next_day": "at the start of the next day",
    "next_month": "at the start of the next month",
}

# The field types that may hold a date: real date fields, and text a step may have written one into.
DATE_FIELD_TYPES = ("date", "datetime", "hidden", "text")


class DelayConfig(ContainerConfig):
    rule = forms.ChoiceField(
        label="Due",
        choices=list(RULES.items()),
        required=False,
        help_text="Left empty, it follows from the value given below.",
    )
    after_seconds = forms.IntegerField(label="Seconds after the submit", min_value=0, required=False)
    at = forms.DateTimeField(label="At", required=False, help_text="ISO date and time, e.g. 2027-01-31T09:00:00+00:00.")
    field = forms.SlugField(label="Date field", required=False)
    offset_seconds = forms.IntegerField(label="Offset (seconds, may be negative)", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.choose_form_field("field", types=DATE_FIELD_TYPES)

    def clean(self):
        data = super().clean()
        rule = data.get("rule") or (
            "after"
            if data.get("after_seconds") is not None
            else "at"
            if data.get("at")
            else "field"
            if data.get("field")
            else ""
        )
        if not rule:
            raise forms.ValidationError("Choose when the delay is due (rule), or give after_seconds, at or field.")
        data["rule"] = rule
        required = {"after": "after_seconds", "at": "at", "field": "field"}.get(rule)
        if required and data.get(required) in (None, "") and required not in self.errors:
            self.add_error(required, f"Required when the delay is due {RULES[rule]}.")
        if rule == "field" and data.get("field") and self.form_fields is not None:
            field_type = self.form_fields.get(data["field"])
            if field_type is None:
                self.add_error("field", f"This form has no field named “{data['field']}”.")
            elif field_type not in DATE_FIELD_TYPES:
                self.add_error("field", f"“{data['field']}” is a {field_type} field, not a date.")
        return data

    def to_config(self):
        config = super().to_config()
        keep = {"rule", {"after": "after_seconds", "at": "at", "field": "field"}.get(config["rule"])}
        if config["rule"] == "field":
            keep.add("offset_seconds")
        return {**{key: value for key, value in config.items() if key in keep}, **self.container_options()}


def start_of_next_day(moment):
    local = timezone.localtime(moment)
    midnight = datetime.datetime.combine(local.date() + datetime.timedelta(days=1), datetime.time())
    return timezone.make_aware(midnight, timezone.get_current_timezone())


def start_of_next_month(moment):
    local = timezone.localtime(moment)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return timezone.make_aware(datetime.datetime(year, month, 1), timezone.get_current_timezone())


def parse_moment(value):
    """A record value as an aware datetime: ISO datetime, or an ISO date at local midnight."""
    if isinstance(value, datetime.datetime):
        moment = value
    else:
        text = str(value or "").strip()
        try:
            # parse_* answer None for non-dates but raise for impossible ones (2027-02-30).
            moment = parse_datetime(text)
            if moment is None:
                day = parse_date(text)
                if day is None:
                    return None
                moment = datetime.datetime.combine(day, datetime.time())
        except ValueError:
            return None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_current_timezone())
    return moment


def due_at(config, *, submitted_at, record_data, now=None):
    """When a delay with this config falls due. Every rule counts from the submit, not from now."""
    rule = config.get("rule") or ("after" if "after_seconds" in config else "now")
    if rule == "now":
        return now or effects.now()
    if rule == "after":
        return submitted_at + datetime.timedelta(seconds=int(config["after_seconds"]))
    if rule == "at":
        moment = parse_moment(config["at"])
        if moment is None:
            raise NodeError(f"“{config['at']}” is not a date and time.")
        return moment
    if rule == "field":
        name = config["field"]
        moment = parse_moment(record_data.get(name))
        if moment is None:
            raise NodeError(f"The record's “{name}” ({record_data.get(name)!r}) is not a date or a date and time.")
        return moment + datetime.timedelta(seconds=int(config.get("offset_seconds") or 0))
    if rule == "next_day":
        return start_of_next_day(submitted_at)
    if rule == "next_month":
        return start_of_next_month(submitted_at)
    raise NodeError(f"Unknown delay rule “{rule}”.")


@register
class Delay(NodeType):
    """Like Background, but its children start no earlier than a due time.

    Config: ``rule`` (``now``, ``after``, ``at``, ``field``, ``next_day``, ``next_month``) and
    its value: ``after_seconds`` (after the submit), ``at`` (ISO datetime), ``field`` plus
    ``offset_seconds`` (a record date field, ± seconds). ``rule`` may be left out when one
    value says it: ``{"after_seconds": 600}``. Day and month starts use ``DJANGO_TIME_ZONE``.
    Like Background, it also takes ``event_type``, ``event_properties`` and ``collect_debug``.
    """

    key = "delay"
    label = "Delay"
    config_form = DelayConfig
    is_container = True
    is_deferred = True

    @classmethod
    def describe(cls, config):
        rule = config.get("rule") or ("after" if "after_seconds" in config else "now")
        if rule == "after":
            return f"{config.get('after_seconds')} s after the submit"
        if rule == "at":
            return f"at {config.get('at')}"
        if rule == "field":
            offset = int(config.get("offset_seconds") or 0)
            return f"at record.{config.get('field')} {'+' if offset >= 0 else '-'} {abs(offset)} s"
        return RULES.get(rule, rule)

    @classmethod
    def mode(cls, config, *, in_background):
        return f"delay: {cls.describe(config)}"

    def due_at(self, ctx):
        return due_at(ctx.config, submitted_at=ctx.record.created_at, record_data=ctx.record.data, now=ctx.now())
