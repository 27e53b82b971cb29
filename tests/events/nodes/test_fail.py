from events.models import RunTask
from events.nodes import registry
from tests.factories import add_node

Fail = registry.get("fail")


def test_fail_fails_the_task_and_the_run_with_its_message(form, submit):
    add_node(form, "update_field", name="before", config={"field": "status", "value": "started"})
    add_node(form, "fail", name="boom", label="Boom", config={"message": "No seats left for {{ record.email }}"})
    add_node(form, "update_field", name="after", config={"field": "status", "value": "finished"})

    outcome = submit({"email": "ann@example.com"})

    boom = outcome.task("boom")
    assert boom.status == RunTask.Status.FAILED
    assert boom.error == "No seats left for ann@example.com"
    assert outcome.run.status == "failed"
    assert "No seats left for ann@example.com" in outcome.run.error
    assert outcome.task("before").status == RunTask.Status.COMPLETE
    assert outcome.task("after").status == RunTask.Status.CANCELLED
    assert outcome.record.data["status"] == "started"
    assert outcome.record.is_complete is True


def test_fail_cancels_a_later_background_and_its_children(form, submit, mailoutbox):
    add_node(form, "fail", name="boom", config={"message": "stop"})
    background = add_node(form, "background", name="bg")
    add_node(
        form,
        "send_email",
        parent=background,
        name="mail",
        config={"to": "a@example.com", "subject": "s", "body": "b"},
    )

    outcome = submit({"email": "ann@example.com"})

    assert mailoutbox == []
    assert outcome.task("bg").status == RunTask.Status.CANCELLED
    assert "mail" not in outcome.tasks  # never started
    assert outcome.run.status == "failed"


def test_fail_inside_a_background_fails_the_run_and_cancels_the_rest(form, submit):
    background = add_node(form, "background", name="bg")
    add_node(form, "fail", parent=background, name="boom", config={"message": "late failure"})
    add_node(form, "set_flag", parent=background, name="never", config={"flag": "done"})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("boom").status == RunTask.Status.FAILED
    assert outcome.task("boom").error == "late failure"
    assert outcome.task("never").status == RunTask.Status.CANCELLED
    assert outcome.task("bg").status == RunTask.Status.FAILED
    assert outcome.run.status == "failed"
    assert outcome.record.flags == {}
    assert outcome.record.is_complete is True


def test_fail_config_defaults_nothing_and_requires_a_message():
    form = Fail.config_form(data={})

    assert not form.is_valid()
    assert "message" in form.errors
