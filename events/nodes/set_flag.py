from django import forms

from .base import ConfigForm, NodeType
from .registry import register


class SetFlagConfig(ConfigForm):
    flag = forms.SlugField(label="Flag", help_text="Flag name, e.g. booking_confirmed.")
    value = forms.BooleanField(label="Value", required=False, initial=True)

    def to_config(self):
        # Left out of a config document, the flag is set to true; a form always sends it.
        value = self.cleaned_data.get("value") if "value" in self.data else True
        return {"flag": self.cleaned_data["flag"], "value": bool(value)}


@register
class SetFlag(NodeType):
    """Sets a named boolean flag on the record; the waiting page can wait for it.

    Config: ``flag`` (name), ``value`` (true or false; default true).
    Output: ``{"flag": ..., "value": ...}``.
    """

    key = "set_flag"
    label = "Set flag"
    config_form = SetFlagConfig
    reaches_outside = False  # it writes our database only

    @classmethod
    def describe(cls, config):
        return f"{config.get('flag')} = {str(config.get('value', True)).lower()}"

    @classmethod
    def flags_set(cls, config):
        return [config["flag"]] if config.get("flag") else []

    def execute(self, ctx):
        name, value = ctx.config["flag"], bool(ctx.config.get("value", True))
        ctx.record.set_flag(name, value)
        ctx.log(f"flag {name} set to {value}")
        return {"flag": name, "value": value}
