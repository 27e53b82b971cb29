from .base import ContainerConfig, NodeType
from .registry import register


class BackgroundConfig(ContainerConfig):
    def to_config(self):
        return self.container_options()


@register
class Background(NodeType):
    """Its children leave the request and run, in order, as one queued job, as soon as possible.

    Config (all optional): ``event_type`` (record the branch as a run of its own, of this
    event), ``event_properties`` (a JSON object the branch sees as ``properties``; values are
    templates), ``collect_debug`` (store a debug trace of each step in the branch).
    """

    key = "background"
    label = "Background"
    config_form = BackgroundConfig
    is_container = True
    is_deferred = True

    @classmethod
    def describe(cls, config):
        return "as soon as possible, after the response"

    def due_at(self, ctx):
        return ctx.now()
