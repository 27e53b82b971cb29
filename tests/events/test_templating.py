import pytest
from django import forms
from django.core.exceptions import ValidationError
from django.db import transaction

from events import engine, templating
from events.models import RunTask
from events.nodes import registry
from forms_app.models import Record
from tests.factories import add_node


def test_templates_see_record_flags_earlier_outputs_and_the_run(form, submit):
    add_node(form, "set_flag", name="vip", config={"flag": "vip", "value": True})
    add_node(
        form,
        "update_field",
        name="summary",
        config={
            "field": "status",
            "value": (
                "{{ record.email }}|{{ record.seats }}|{{ record.id }}|{{ flags.vip }}"
                "|{{ tasks.vip.output.flag }}|{{ tasks.vip.status }}|{{ run.reference }}|{{ run.event }}"
            ),
        },
    )

    submitted = submit({"email": "ann@example.com", "seats": 4})
    record, run = submitted.record, submitted.run

    assert record.data["status"] == f"ann@example.com|4|{record.pk}|True|vip|complete|{run.reference}|record_update"


def test_templates_see_event_properties(form, sync_queue, django_capture_on_commit_callbacks):
    add_node(
        form,
        "update_field",
        config={"field": "status", "value": "{{ properties.source }}/{{ properties.ids.0 }}"},
    )

    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic(durable=True):
            record = Record.objects.create(form=form, data={"email": "ann@example.com"})
            run = engine.run_start(record=record, properties={"source": "api", "ids": [7, 8]}, is_submission=True)
        engine.run_inline(run=run)

    record.refresh_from_db()
    assert record.data["status"] == "api/7"


def test_templates_do_not_autoescape(form, submit):
    add_node(
        form,
        "update_field",
        config={"field": "status", "value": "<b>{{ record.email }}</b> & {{ properties.nothing }}"},
    )

    record = submit({"email": "o'neil&co@example.com"}).record

    assert record.data["status"] == "<b>o'neil&co@example.com</b> & "


def test_rendered_email_keeps_html_and_quotes(form, submit, mailoutbox):
    add_node(
        form,
        "send_email",
        config={"to": "ann@example.com", "subject": "<i>{{ record.status }}</i>", "body": '{{ record.status }} "q"'},
    )

    submit({"email": "ann@example.com", "status": "<b>Tom & Jerry's</b>"})

    assert mailoutbox[0].subject == "<i><b>Tom & Jerry's</b></i>"
    assert mailoutbox[0].body == '<b>Tom & Jerry\'s</b> "q"'


def test_render_without_template_syntax_returns_the_value_unchanged():
    assert templating.render("plain {text} 100% ", {}) == "plain {text} 100% "
    assert templating.render(42, {}) == 42
    assert templating.render(None, {}) is None


def test_render_missing_variables_render_empty():
    assert templating.render("[{{ record.nothing }}]", {"record": {}}) == "[]"


def test_render_filters_and_tags_work():
    text = "{% for s in seats %}{{ s|upper }}{% if not forloop.last %},{% endif %}{% endfor %}"

    assert templating.render(text, {"seats": ["a1", "b2"]}) == "A1,B2"


@pytest.mark.parametrize(
    "template",
    ["{% if %}x{% endif %}", "{% if record.email %}unclosed", "{{ record.email|no_such_filter }}", "{% load static %}"],
)
def test_a_template_syntax_error_is_a_config_form_error(template):
    with pytest.raises(ValidationError) as excinfo:
        registry.get("update_field").clean_config({"field": "status", "value": template})

    messages = excinfo.value.message_dict
    assert list(messages) == ["value"]
    assert "Template error" in messages["value"][0]


def test_template_fields_validate_in_any_config_form():
    class Config(forms.Form):
        text = templating.TemplateCharField()
        body = templating.TemplateTextField()

    form = Config(data={"text": "{{ ok }}", "body": "{% endif %}"})

    assert not form.is_valid()
    assert list(form.errors) == ["body"]


def test_templates_cannot_include_files(form, submit):
    add_node(form, "update_field", name="peek", config={"field": "status", "value": '{% include "/etc/passwd" %}'})

    submitted = submit({"email": "ann@example.com"})
    record, run = submitted.record, submitted.run

    assert "root:" not in str(record.data)
    task = run.tasks.get(name="peek")
    assert task.status == RunTask.Status.FAILED
