import pytest
from django.core.exceptions import ValidationError

from events.models import RunTask
from events.nodes import registry
from tests.factories import add_node

Pause = registry.get("pause")


@pytest.mark.parametrize("seconds", [61, -1, "soon"])
def test_pause_config_refuses_values_outside_0_to_60(seconds):
    with pytest.raises(ValidationError) as excinfo:
        Pause.clean_config({"seconds": seconds})

    assert "seconds" in excinfo.value.message_dict


@pytest.mark.parametrize("seconds", [0, 0.1, 60])
def test_pause_config_accepts_0_to_60(seconds):
    assert Pause.clean_config({"seconds": seconds}) == {"seconds": seconds}


def test_pause_runs_and_the_next_step_follows(form, submit):
    add_node(form, "pause", name="wait", config={"seconds": 0.1})
    add_node(form, "set_flag", name="after", config={"flag": "woke"})

    outcome = submit({"email": "ann@example.com"})

    wait = outcome.task("wait")
    assert wait.status == RunTask.Status.COMPLETE
    assert wait.output == {"slept_seconds": 0.1}
    assert outcome.task("after").status == RunTask.Status.COMPLETE
    assert outcome.record.flags == {"woke": True}
    assert outcome.run.status == "complete"
