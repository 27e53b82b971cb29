from .base import ConfigForm, NodeType
from .registry import register


class GoAsyncConfig(ConfigForm):
    pass


@register
class GoAsync(NodeType):
    """A marker: every later sibling in its sequence runs in the background, as one job.

    In the request, the inline phase ends here and the user is redirected at
    once; in a worker it changes nothing. Valid anywhere a sequence is (the top
    level, a container's steps, an error branch). Config: none.
    """

    key = "go_async"
    label = "Go async"
    config_form = GoAsyncConfig
    is_marker = True
    backgrounds_later_siblings = True

    @classmethod
    def describe(cls, config):
        return "the steps after this one run in the background"
