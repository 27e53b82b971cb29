import pytest

from forms_app.services import record_submit
from tests.factories import FieldFactory, add_node


@pytest.fixture
def trail_form(form):
    """The booking form plus a hidden ``trail`` field: every mark step appends its letter, so order shows."""
    FieldFactory(form=form, name="trail", label="Trail", type="hidden")
    return form


@pytest.fixture
def add_mark(trail_form):
    """``add_mark("B", parent=bg)``: an update_field node that appends "B" to the record's trail."""

    def add(letter, parent=None, **fields):
        config = {"field": "trail", "value": "{{ record.trail }}" + letter}
        return add_node(trail_form, "update_field", parent=parent, name=letter.lower(), label=letter, config=config, **fields)

    return add


@pytest.fixture
def seed_tree(trail_form, add_mark):
    """The seed's example: A inline, Background[B, C, confirmation email], D inline."""
    a = add_mark("A")
    background = add_node(trail_form, "background", name="confirm", label="Confirm")
    b = add_mark("B", parent=background)
    c = add_mark("C", parent=background)
    email = add_node(
        trail_form,
        "send_email",
        parent=background,
        name="mail",
        config={"to": "{{ record.email }}", "subject": "Booked", "body": "Trail {{ record.trail }}"},
    )
    d = add_mark("D")
    return {"A": a, "background": background, "B": b, "C": c, "email": email, "D": d}


@pytest.fixture
def submit(trail_form, django_capture_on_commit_callbacks):
    """Submit the form as a user would (record_submit), running the after-commit hand-offs."""
    def run(**data):
        with django_capture_on_commit_callbacks(execute=True):
            record = record_submit(form=trail_form, data={"email": "ann@example.com", "trail": "", **data})
        record.refresh_from_db()
        return record

    return run
