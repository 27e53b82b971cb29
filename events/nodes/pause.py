from django import forms

from .base import ConfigForm, NodeType
from .registry import register

MAX_PAUSE_SECONDS = 60


class PauseConfig(ConfigForm):
    seconds = forms.FloatField(
        label="Seconds",
        min_value=0,
        max_value=MAX_PAUSE_SECONDS,
        help_text="In the submit request (not in Background), at most EVENTS_INLINE_STEP_MAX_SECONDS.",
    )


@register
class Pause(NodeType):
    """Sleeps for a number of seconds (at most 60): for demos and tests.

    Config: ``seconds`` (0 to 60). Output: ``{"slept_seconds": ...}``. In the submit request
    (inline) it sleeps at most EVENTS_INLINE_STEP_MAX_SECONDS, and its log says so.
    """

    key = "pause"
    label = "Pause"
    config_form = PauseConfig

    @classmethod
    def describe(cls, config):
        return f"{config.get('seconds')} s"

    def execute(self, ctx):
        seconds = ctx.bounded_wait(min(float(ctx.config["seconds"]), MAX_PAUSE_SECONDS), what="the pause")
        ctx.sleep(seconds)
        return {"slept_seconds": seconds}
