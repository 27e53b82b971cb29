import time

from django import forms

from .base import ConfigForm, NodeType
from .registry import register

MAX_PAUSE_SECONDS = 60


class PauseConfig(ConfigForm):
    seconds = forms.FloatField(label="Seconds", min_value=0, max_value=MAX_PAUSE_SECONDS)


@register
class Pause(NodeType):
    """Sleeps for a number of seconds (at most 60): for demos and tests.

    Config: ``seconds`` (0 to 60). Output: ``{"slept_seconds": ...}``.
    """

    key = "pause"
    label = "Pause"
    config_form = PauseConfig

    @classmethod
    def describe(cls, config):
        return f"{config.get('seconds')} s"

    def execute(self, ctx):
        seconds = min(float(ctx.config["seconds"]), MAX_PAUSE_SECONDS)
        time.sleep(seconds)
        return {"slept_seconds": seconds}
