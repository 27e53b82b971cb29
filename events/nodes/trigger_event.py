from django import forms

from .base import ConfigForm, JSONObjectField, NodeType
from .registry import register


class TriggerEventConfig(ConfigForm):
    event = forms.SlugField(label="Event", max_length=100, help_text="The name of another event of this form.")
    properties = JSONObjectField(
        label="Properties",
        required=False,
        help_text=(
            "A JSON object the event's run sees as properties (values may be templates): "
            '{"plan": "{{ record.plan }}"}.'
        ),
    )

    def clean_properties(self):
        value = self.cleaned_data.get("properties")
        if value in (None, ""):
            return None
        if not isinstance(value, dict):
            raise forms.ValidationError('Give the properties as a JSON object: {"name": "value"}.')
        return value


@register
class TriggerEvent(NodeType):
    """Fires another event of the same form for the same record, as a run of its own.

    Config: ``event`` (the event's name), ``properties`` (a JSON object, values templated;
    the new run sees it as ``properties``). The child run links to this run; its inline
    phase runs at once, its deferred work goes to the queue. A chain of events deeper than
    ``EVENTS_MAX_EVENT_DEPTH`` (default 20) stops with an error. Output: ``run_id``,
    ``event``, ``status``.
    """

    key = "trigger_event"
    label = "Trigger event"
    config_form = TriggerEventConfig

    @classmethod
    def describe(cls, config):
        return f"fires “{config.get('event')}”"

    def execute(self, ctx):
        properties = ctx.render(ctx.config.get("properties") or {})
        result = ctx.trigger_event(event=ctx.config["event"], properties=properties)
        ctx.log(f"fired “{result['event']}”: run {result['run_id']} is {result['status']}")
        return result
