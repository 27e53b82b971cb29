from ..templating import TemplateCharField
from .base import ConfigForm, NodeError, NodeType
from .registry import register


class FailConfig(ConfigForm):
    message = TemplateCharField(label="Message", initial="Failed on purpose")


@register
class Fail(NodeType):
    """Fails on purpose with a message: for error paths and tests.

    Config: ``message`` (templated).
    """

    key = "fail"
    label = "Fail"
    config_form = FailConfig
    reaches_outside = False  # it writes our database only

    @classmethod
    def describe(cls, config):
        return f"“{config.get('message')}”"

    def execute(self, ctx):
        raise NodeError(ctx.render(ctx.config["message"]))
