from django import forms

from ..templating import TemplateCharField
from .base import ConfigForm, NodeError, NodeType
from .registry import register


class UpdateFieldConfig(ConfigForm):
    field = forms.SlugField(label="Field", help_text="The name of a field of this form (hidden fields too).")
    value = TemplateCharField(label="Value", required=False, help_text="Text or a template, e.g. {{ record.email }}.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.choose_form_field("field", empty_label="Choose a field")
        if self.form_fields is not None and "hidden" not in self.form_fields.values():
            self.fields["field"].help_text += (
                " This form has no hidden field to write to: add a field of type Hidden to the form "
                "to keep a value the visitor neither sees nor types."
            )

    def clean_field(self):
        name = self.cleaned_data["field"]
        if self.unknown_field(name):
            raise forms.ValidationError(f"This form has no field named “{name}”.")
        return name

    def to_config(self):
        return {"field": self.cleaned_data["field"], "value": self.cleaned_data.get("value") or ""}


@register
class UpdateField(NodeType):
    """Sets a field of the record to a value (a template over the record, properties and earlier outputs).

    Config: ``field`` (a field name of the form), ``value`` (text or template).
    Integer and checkbox fields store the rendered value as a number or a boolean.
    Output: ``{"field": ..., "value": ...}``.
    """

    key = "update_field"
    label = "Update field"
    config_form = UpdateFieldConfig
    reaches_outside = False  # it writes our database only

    @classmethod
    def describe(cls, config):
        return f"{config.get('field')} = {config.get('value')!s}"

    def execute(self, ctx):
        name = ctx.config["field"]
        value = ctx.render(ctx.config.get("value", ""))
        field = ctx.record.form.field_named(name)
        if field is None:
            raise NodeError(f"The form has no field named “{name}”.", retryable=False)
        value = coerce(field.type, value)
        ctx.record.set_value(name, value)
        ctx.log(f"{name} set to {value!r}")
        return {"field": name, "value": value}


def coerce(field_type, value):
    if not isinstance(value, str):
        return value
    if field_type == "integer":
        try:
            return int(value.strip())
        except ValueError:
            raise NodeError(f"“{value}” is not a whole number.", retryable=False) from None
    if field_type == "checkbox":
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return value
