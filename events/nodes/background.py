from django.utils import timezone

from .base import ConfigForm, NodeType
from .registry import register


class BackgroundConfig(ConfigForm):
    pass


@register
class Background(NodeType):
    """Its children leave the request and run, in order, as one queued job, as soon as possible.

    Config: none.
    """

    key = "background"
    label = "Background"
    config_form = BackgroundConfig
    is_container = True

    @classmethod
    def describe(cls, config):
        return "as soon as possible, after the response"

    def due_at(self, ctx):
        return timezone.now()
