import pytest
from django.core.exceptions import ValidationError

from events.models import RunTask
from events.nodes import registry
from tests.factories import add_node

SendEmail = registry.get("send_email")


def test_send_email_sends_rendered_to_subject_and_body(form, submit, mailoutbox, settings):
    settings.DEFAULT_FROM_EMAIL = "bookings@example.org"
    add_node(
        form,
        "send_email",
        name="mail",
        config={
            "to": "{{ record.email }}, desk@example.org",
            "subject": "Your {{ record.seats }} seats",
            "body": "Hello {{ record.email }},\n<b>reference</b> {{ run.reference }}",
        },
    )

    outcome = submit({"email": "ann@example.com", "seats": 3})

    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.to == ["ann@example.com", "desk@example.org"]
    assert message.subject == "Your 3 seats"
    assert message.body == f"Hello ann@example.com,\n<b>reference</b> {outcome.run.reference}"
    assert message.from_email == "bookings@example.org"
    task = outcome.task("mail")
    assert task.status == RunTask.Status.COMPLETE
    assert task.output == {"to": ["ann@example.com", "desk@example.org"], "subject": "Your 3 seats"}


def test_send_email_uses_a_templated_sender(form, submit, mailoutbox):
    add_node(
        form,
        "send_email",
        config={"to": "ann@example.com", "subject": "Hi", "body": "Body", "from_email": "{{ properties.sender }}"},
    )

    submit({"email": "ann@example.com"}, properties={"sender": "team@example.org"})

    assert mailoutbox[0].from_email == "team@example.org"


def test_send_email_folds_a_multi_line_subject_into_one_line(form, submit, mailoutbox):
    add_node(form, "send_email", config={"to": "ann@example.com", "subject": "{{ record.status }}", "body": "x"})

    submit({"email": "ann@example.com", "status": "line one\nline two"})

    assert mailoutbox[0].subject == "line one line two"


def test_send_email_with_an_empty_recipient_fails_and_sends_nothing(form, submit, mailoutbox):
    add_node(form, "send_email", name="mail", config={"to": "{{ record.status }}", "subject": "Hi", "body": "x"})

    outcome = submit({"email": "ann@example.com"})

    assert mailoutbox == []
    task = outcome.task("mail")
    assert task.status == RunTask.Status.FAILED
    assert "no recipient" in task.error
    assert outcome.run.status == "failed"


def test_send_email_with_an_invalid_recipient_fails_and_sends_nothing(form, submit, mailoutbox):
    add_node(
        form,
        "send_email",
        name="mail",
        config={"to": "ok@example.com, {{ record.status }}", "subject": "Hi", "body": "x"},
    )

    outcome = submit({"email": "ann@example.com", "status": "not-an-address"})

    assert mailoutbox == []
    task = outcome.task("mail")
    assert task.status == RunTask.Status.FAILED
    assert "not-an-address" in task.error
    assert "not a valid email address" in task.error


def test_send_email_config_requires_to_subject_and_body():
    with pytest.raises(ValidationError) as excinfo:
        SendEmail.clean_config({})

    assert {"to", "subject", "body"} <= set(excinfo.value.message_dict)


def test_send_email_config_rejects_a_broken_template():
    with pytest.raises(ValidationError) as excinfo:
        SendEmail.clean_config({"to": "{% if record.email %}{{ record.email }}", "subject": "Hi", "body": "x"})

    assert "to" in excinfo.value.message_dict
    assert "Template error" in " ".join(excinfo.value.message_dict["to"])
