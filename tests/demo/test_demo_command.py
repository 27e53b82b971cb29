import datetime
import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from demo.management.commands.demo import DEMO_FILE
from events.formfile import form_check, form_export
from events.models import Node, RunTask
from forms_app.models import Form
from forms_app.services import record_submit
from forms_app.waiting import render_message


@pytest.fixture
def debug(settings):
    settings.DEBUG = True
    return settings


def run_demo(*args):
    out = io.StringIO()
    call_command("demo", *args, stdout=out)
    return out.getvalue()


def shape(nodes):
    """(type, name or label, [children shape]) for every node of a snapshot."""
    return [
        (node["type"], node["label"], shape(node["children"])) if node["children"] else (node["type"], node["label"])
        for node in nodes
    ]


def test_demo_file_is_a_valid_form_file_in_canonical_form(db):
    document = json.loads(DEMO_FILE.read_text())
    assert form_check(document).slug == "booking"


def test_demo_loads_the_booking_form_and_an_admin_once(db, debug):
    output = run_demo()

    assert "Created form “booking”" in output
    assert "Created the development admin account: admin / admin" in output
    assert "http://127.0.0.1:8000/f/booking/" in output and "http://127.0.0.1:8000/admin/" in output

    output = run_demo()

    assert "Replaced form “booking”" in output
    assert "already exists" in output
    assert Form.objects.filter(slug="booking").count() == 1
    User = get_user_model()
    assert User.objects.count() == 1
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password("admin")


def test_demo_prints_the_address_the_site_is_served_at(db, debug):
    """make run PORT=8101 sets EVENTS_PUBLIC_URL to http://127.0.0.1:8101 (scripts/run.sh, the Makefile)."""
    debug.EVENTS_PUBLIC_URL = "http://127.0.0.1:8101/"

    output = run_demo()

    assert "http://127.0.0.1:8101/f/booking/" in output and "http://127.0.0.1:8101/admin/" in output
    assert ":8000" not in output


def test_demo_under_make_run_does_not_tell_the_reader_to_run_make_run(db, debug):
    output = run_demo("--no-next-steps")

    assert "Created form “booking”" in output
    assert "make run" not in output and "http://" not in output
    assert "make run" in run_demo()


def test_demo_booking_form_has_the_seed_tree(db, debug):
    run_demo()
    form = Form.objects.get(slug="booking")

    assert form.title == "Book a flight"
    assert [(f.name, f.type, f.required) for f in form.fields.all()] == [
        ("name", "text", True),
        ("email", "email", True),
        ("origin", "text", True),
        ("destination", "text", True),
        ("departure", "date", True),
        ("seats", "integer", True),
        ("cabin", "choice", False),
        ("notes", "textarea", False),
        ("field_a", "hidden", False),
        ("field_b", "hidden", False),
        ("field_c", "hidden", False),
        ("field_d", "hidden", False),
        ("status", "hidden", False),
        ("seat", "hidden", False),
        ("loyalty", "hidden", False),
    ]
    seats = form.fields.get(name="seats")
    assert (seats.min_value, seats.max_value) == (1, 9)
    assert form.fields.get(name="cabin").choices == ["Economy", "Premium", "Business"]
    assert (form.wait_for, form.wait_flag, form.poll_seconds, form.max_wait_seconds) == ("flag", "booked", 1, 60)
    assert "{{ record.name }}" in form.done_message and "{{ record.email }}" in form.done_message
    assert "your seat is {{ record.seat }}" in form.done_message

    tree = Node.objects.snapshot(form)
    assert shape(tree) == [
        ("update_field", "Update Field A"),
        (
            "background",
            "Confirm your booking",
            [
                ("update_field", "Update Field B"),
                ("update_field", "Update Field C"),
                ("http_request", "Checking seat availability"),
                ("update_field", "Store the seat"),
                ("pause", "Reserve seats"),
                ("send_email", "Send confirmation email"),
                ("http_request", "Add loyalty miles"),
                ("set_flag", "Booking confirmed"),
            ],
        ),
        ("update_field", "Update Field D"),
        ("delay", "Follow-up email", [("send_email", "Send follow-up email")]),
    ]
    assert tree[1]["name"] == "confirm" and tree[3]["name"] == "follow_up"
    assert tree[3]["config"] == {"rule": "after", "after_seconds": 10}
    confirm = {node["label"]: node for node in tree[1]["children"]}
    assert confirm["Reserve seats"]["config"] == {"seconds": 3}
    assert confirm["Booking confirmed"]["config"] == {"flag": "booked", "value": True}
    check_seat = confirm["Checking seat availability"]
    assert check_seat["name"] == "check_seat"
    assert check_seat["config"]["url"] == "{{ site.public_url }}/demo/external-service/"
    assert check_seat["config"]["wait_for_callback"] is True
    assert check_seat["config"]["callback_timeout_seconds"] == 120
    assert confirm["Store the seat"]["config"] == {"field": "seat", "value": "{{ tasks.check_seat.output.seat }}"}
    visible = [node["label"] for node in tree + tree[1]["children"] if node["visible"]]
    assert visible == [
        "Update Field A",
        "Confirm your booking",
        "Checking seat availability",
        "Reserve seats",
        "Send confirmation email",
        "Add loyalty miles",
    ]
    loyalty = confirm["Add loyalty miles"]
    assert loyalty["config"]["url"] == "{{ site.public_url }}/demo/loyalty-service/"
    assert loyalty["retry"]["max_attempts"] == 2
    assert [(step["type"], step["label"]) for step in loyalty["on_error"]] == [
        ("update_field", "Remember the miles for later"),
        ("set_subtext", "Loyalty miles: added later"),
    ]


def test_demo_file_is_what_an_export_of_the_demo_form_writes(db, debug):
    run_demo()
    assert form_export(Form.objects.get(slug="booking")) == json.loads(DEMO_FILE.read_text())


def test_demo_refuses_without_debug_unless_forced(db, settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG is off"):
        run_demo()
    assert not Form.objects.exists() and not get_user_model().objects.exists()

    run_demo("--force")
    assert Form.objects.filter(slug="booking").exists()
    assert get_user_model().objects.filter(username="admin").exists()


def test_demo_booking_waits_for_the_seat_check_then_runs_to_the_booked_flag(
    db, debug, sync_queue, django_capture_on_commit_callbacks, mailoutbox, monkeypatch, callback_server, client
):
    """The external service is a recording server here; the test answers as the stand-in service would."""
    monkeypatch.setattr("events.effects.time.sleep", lambda seconds: None)
    debug.EVENTS_PUBLIC_URL = callback_server.url
    debug.EVENTS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    run_demo()
    form = Form.objects.get(slug="booking")
    data = {
        "name": "Ann",
        "email": "ann@example.com",
        "origin": "Oslo",
        "destination": "Rome",
        "departure": datetime.date(2030, 5, 1).isoformat(),
        "seats": 2,
        "cabin": "Business",
        "notes": "",
    }

    with django_capture_on_commit_callbacks(execute=True):
        record = record_submit(form=form, data=data)

    record.refresh_from_db()
    check_seat = RunTask.objects.get(run__record=record, name="check_seat")
    assert check_seat.status == RunTask.Status.AWAITING, (check_seat.error, check_seat.logs)
    assert record.flags.get("booked") is None and mailoutbox == []
    [sent] = callback_server.requests
    assert (sent["method"], sent["path"]) == ("POST", "/demo/external-service/")
    body = json.loads(sent["body"])
    assert body["taskId"] == str(check_seat.pk)
    assert body["callbackUrl"] == callback_server.url + "/api/external-events/callback/"

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/external-events/callback/",
            {
                "taskId": body["taskId"],
                "status": "SUCCESS",
                "logs": ["Seat 14C held"],
                "output": {"seat": "14C"},
                "subtext": "Seat 14C held",
            },
            content_type="application/json",
            headers={"Authorization": f"Bearer {body['callbackToken']}"},
        )

    assert response.status_code == 200, response.content
    record.refresh_from_db()
    assert record.flags.get("booked") is True
    assert record.data["seat"] == "14C"
    assert "your seat is 14C" in render_message(form.done_message, record)
    assert record.data["field_a"] and record.data["field_b"] and record.data["field_d"]
    assert record.data["field_c"] == "2 seat(s), Business"
    assert [message.subject for message in mailoutbox] == ["Your flight Oslo to Rome is booked"]
    assert mailoutbox[0].to == ["ann@example.com"]
