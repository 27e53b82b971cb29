from ..storable import SUBTEXT_MAX_LENGTH
from ..templating import TemplateCharField
from .base import ConfigForm, NodeType
from .registry import register


class SetSubtextConfig(ConfigForm):
    text = TemplateCharField(
        label="Text", max_length=SUBTEXT_MAX_LENGTH, help_text="Progress text shown on the waiting page."
    )


@register
class SetSubtext(NodeType):
    """Sets the progress text of the run (and of its own task), shown on the waiting page.

    Config: ``text`` (templated). Output: ``{"subtext": ...}``.
    """

    key = "set_subtext"
    label = "Set subtext"
    config_form = SetSubtextConfig
    reaches_outside = False  # it writes our database only

    @classmethod
    def describe(cls, config):
        return f"“{config.get('text')}”"

    def execute(self, ctx):
        text = ctx.render(ctx.config["text"])[:SUBTEXT_MAX_LENGTH]
        ctx.run.set_subtext(text)
        ctx.task.set_subtext(text)
        return {"subtext": text}
