"""Build a Django form class from a Form's Field rows, and turn its cleaned data into JSON."""

import datetime
import decimal

from django import forms
from django.core.validators import RegexValidator
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from .models import Field

T = Field.Type


def _plain(number):
    """A stored bound as the admin wrote it: 0.500000 → 0.5, 100.000000 → 100."""
    if number == number.to_integral_value():
        return decimal.Decimal(int(number))
    return number.normalize()


def _number_bounds(field):
    bounds = {}
    if field.min_value is not None:
        bounds["min_value"] = _plain(field.min_value)
    if field.max_value is not None:
        bounds["max_value"] = _plain(field.max_value)
    return bounds


def _choices(field):
    return [(str(choice), str(choice)) for choice in field.choices or []]


def form_field(field):
    """One Django form field for one Field row (None for hidden fields: they are never shown)."""
    common = {"label": field.label, "required": field.required, "help_text": field.help_text}
    if field.default:
        common["initial"] = field.default
    message = format_lazy(_("Enter a value matching {pattern}."), pattern=field.pattern)
    validators = [RegexValidator(field.pattern, message)] if field.pattern else []
    text_limits = {"max_length": field.max_length} if field.max_length else {}
    match field.type:
        case T.HIDDEN:
            return None
        case T.TEXT:
            return forms.CharField(validators=validators, **text_limits, **common)
        case T.TEXTAREA:
            return forms.CharField(widget=forms.Textarea, validators=validators, **text_limits, **common)
        case T.EMAIL:
            return forms.EmailField(validators=validators, **text_limits, **common)
        case T.URL:
            return forms.URLField(validators=validators, **text_limits, **common)
        case T.INTEGER:
            bounds = {key: int(value) for key, value in _number_bounds(field).items()}
            return forms.IntegerField(**bounds, **common)
        case T.DECIMAL:
            return forms.DecimalField(**_number_bounds(field), **common)
        case T.DATE:
            return forms.DateField(widget=forms.DateInput(attrs={"type": "date"}), **common)
        case T.DATETIME:
            return forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), **common)
        case T.CHOICE:
            return forms.ChoiceField(choices=[("", "---------")] + _choices(field), **common)
        case T.MULTIPLE_CHOICE:
            return forms.MultipleChoiceField(choices=_choices(field), widget=forms.CheckboxSelectMultiple, **common)
        case T.CHECKBOX:
            return forms.BooleanField(**common)
    raise ValueError(f"Unknown field type {field.type!r}")


def build_form_class(form):
    """A forms.Form subclass for ``form``: one field per shown Field, in order."""
    attrs = {}
    for field in form.fields.all():
        built = form_field(field)
        if built is not None:
            attrs[field.name] = built
    return type(f"{form.slug.title().replace('-', '')}SubmissionForm", (forms.Form,), attrs)


def to_json(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def record_data(form, cleaned_data):
    """What a record stores: every shown field's value as JSON, and hidden fields at their default."""
    data = {name: to_json(value) for name, value in cleaned_data.items()}
    for field in form.fields.all():
        if field.type == T.HIDDEN:
            data[field.name] = field.default
    return data
