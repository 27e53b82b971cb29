"""Templates in node config values: Django template syntax, no autoescaping.

Values rendered here are data (a field value, an email body, a URL), not
HTML; every place that shows them in a page escapes them there.
"""

from django import forms
from django.template import Context, Engine, TemplateSyntaxError

_engine = Engine(
    autoescape=False, libraries={}, builtins=["django.template.defaulttags", "django.template.defaultfilters"]
)


def render(text, context):
    if not isinstance(text, str) or ("{{" not in text and "{%" not in text):
        return text
    return _engine.from_string(text).render(Context(context, autoescape=False))


def validate_template(text):
    """Raise a form ValidationError if ``text`` is not a valid template."""
    if not isinstance(text, str):
        return
    try:
        _engine.from_string(text)
    except TemplateSyntaxError as exc:
        raise forms.ValidationError(f"Template error: {exc}") from exc


class TemplateCharField(forms.CharField):
    """A config value that may contain {{ record.x }}, {{ flags.y }}, {{ tasks.n.output.z }}, {{ properties.p }}."""

    default_validators = [validate_template]


class TemplateTextField(TemplateCharField):
    widget = forms.Textarea(attrs={"rows": 4})
