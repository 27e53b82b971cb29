"""The public pages stay usable with a screen reader (issue 11, "Pages people see when things go wrong").

- The waiting page's live region is never replaced: each poll swaps the section inside it, and a poll
  that would show the same is answered 204 (nothing swapped, nothing read out again).
- Its <title> and heading say how the run ended (the poll that brings the end swaps them too).
- The form's errors are tied to their inputs (aria-invalid, aria-describedby naming the message's id)
  and summed up once at the top.
"""

import re

import pytest
from django.test.html import parse_html

from events.engine import run_cancel
from events.models import Run
from forms_app.services import record_submit
from tests.factories import FieldFactory, add_node

HTMX = {"HX-Request": "true"}


def submit(form, *nodes):
    for node_type, config in nodes:
        add_node(form, node_type, config=config)
    return record_submit(form=form, data={"email": "ann@example.com", "seats": 2, "status": ""})


def elements(node, name=None):
    """Every element under a django.test.html tree, depth first (optionally only those named ``name``)."""
    for child in getattr(node, "children", []):
        if isinstance(child, str):
            continue
        if name is None or child.name == name:
            yield child
        yield from elements(child, name)


def attribute(element, name):
    return dict(element.attributes).get(name)


def by_id(tree, element_id):
    return next(element for element in elements(tree) if attribute(element, "id") == element_id)


def heading_text(html):
    return re.search(r'<h1 id="page-heading"[^>]*>(.*?)</h1>', html, re.S)[1].strip()


def title_text(html):
    return re.search(r"<title>(.*?)</title>", html, re.S)[1].strip()


# The live region


def test_the_live_region_holds_the_polling_section_and_is_not_itself_swapped(client, form):
    record = submit(form, ("delay", {"after_seconds": 600}))

    page = parse_html(client.get(f"/r/{record.token}/").content.decode())

    region = by_id(page, "status-region")
    assert attribute(region, "aria-live") == "polite"
    [section] = [element for element in elements(region, "section")]
    assert attribute(section, "id") == "status"
    assert attribute(section, "hx-swap") == "outerHTML"  # the section replaces itself, inside the region
    assert attribute(section, "hx-target") is None
    assert attribute(section, "aria-live") is None
    partial = client.get(f"/r/{record.token}/status/", headers=HTMX).content.decode()
    assert "aria-live" not in partial and "status-region" not in partial


def test_a_poll_that_would_show_the_same_is_answered_204_and_a_change_is_swapped_in(client, form):
    record = submit(form, ("delay", {"after_seconds": 600}))
    page = client.get(f"/r/{record.token}/").content.decode()
    poll_url = re.search(r'hx-get="([^"]+)"', page)[1].replace("&amp;", "&")

    unchanged = client.get(poll_url, headers=HTMX)

    assert unchanged.status_code == 204 and unchanged.content == b""
    Run.objects.filter(record=record).update(subtext="Halfway there")
    changed = client.get(poll_url, headers=HTMX)
    assert changed.status_code == 200
    assert '<p class="subtext">Halfway there</p>' in changed.content.decode()
    next_poll = re.search(r'hx-get="([^"]+)"', changed.content.decode())[1].replace("&amp;", "&")
    assert next_poll != poll_url
    assert client.get(next_poll, headers=HTMX).status_code == 204


# The title and the heading


def test_while_the_run_works_the_title_and_heading_are_the_forms_waiting_title(client, form):
    form.waiting_title = "Booking your seats"
    form.save()
    record = submit(form, ("delay", {"after_seconds": 600}))

    html = client.get(f"/r/{record.token}/").content.decode()

    assert title_text(html) == heading_text(html) == "Booking your seats"
    partial = client.get(f"/r/{record.token}/status/", headers=HTMX).content.decode()
    assert "<title>" not in partial and "page-heading" not in partial  # nothing to change yet


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ("done", "Your submission has been processed"),
        ("failed", "Your submission could not be processed"),
        ("cancelled", "The processing of your submission was cancelled"),
    ],
)
def test_when_the_run_ends_the_title_and_heading_say_how_on_the_page_and_in_the_poll(client, form, state, words):
    form.waiting_title = "Booking your seats"
    form.save()
    if state == "done":
        record = submit(form, ("set_flag", {"flag": "booked"}))
    elif state == "failed":
        record = submit(form, ("fail", {"message": "no seats"}), ("delay", {"after_seconds": 600}))
    else:
        record = submit(form, ("delay", {"after_seconds": 600}))
        run_cancel(run=Run.objects.get(record=record))

    page = client.get(f"/r/{record.token}/").content.decode()  # also what the <noscript> refresh loads
    poll = client.get(f"/r/{record.token}/status/?shown=an-older-state", headers=HTMX).content.decode()

    assert f'data-state="{state}"' in page
    assert title_text(page) == heading_text(page) == words
    assert "Booking your seats" not in page
    # The poll that brings the end: a <title> at its root (htmx sets the document's title from it) and
    # the heading swapped out of band; the section itself no longer polls.
    assert poll.lstrip().startswith(f"<title>{words}</title>")
    assert f'<h1 id="page-heading" hx-swap-oob="true">{words}</h1>' in poll
    assert "hx-trigger" not in poll


# The form's errors


def test_each_invalid_input_points_at_its_message_and_is_marked_invalid(client, form):
    form.fields.filter(name="email").update(help_text="We send the tickets there")

    html = client.post("/f/booking-test/", {"email": "not an address", "seats": "12"}).content.decode()
    tree = parse_html(html)

    for name, message in [("email", "Enter a valid email address."), ("seats", "less than or equal to 9")]:
        field = by_id(tree, f"id_{name}")
        assert attribute(field, "aria-invalid") == "true"
        described = attribute(field, "aria-describedby").split()
        assert f"id_{name}_error" in described
        assert message in str(by_id(tree, f"id_{name}_error"))
    assert attribute(by_id(tree, "id_email"), "aria-describedby").split() == ["id_email_helptext", "id_email_error"]
    assert "We send the tickets there" in str(by_id(tree, "id_email_helptext"))  # the help text's id exists


def test_a_valid_input_next_to_invalid_ones_is_not_marked_invalid(client, form):
    tree = parse_html(client.post("/f/booking-test/", {"email": "", "seats": "2"}).content.decode())

    assert attribute(by_id(tree, "id_seats"), "aria-invalid") is None
    assert attribute(by_id(tree, "id_email"), "aria-invalid") == "true"


def test_the_errors_are_summed_up_once_with_links_to_their_inputs_and_in_the_title(client, form):
    html = client.post("/f/booking-test/", {"email": "", "seats": "12"}).content.decode()
    tree = parse_html(html)

    summary = by_id(tree, "error-summary")
    assert attribute(summary, "role") == "alert"
    assert [attribute(link, "href") for link in elements(summary, "a")] == ["#id_email", "#id_seats"]
    assert "Please correct the 2 answers marked below." in str(summary)
    assert title_text(html) == "Error: Book a flight"
    assert html.count('role="alert"') == 1
    assert "error-summary" not in client.get("/f/booking-test/").content.decode()


def test_a_group_of_checkboxes_is_a_fieldset_described_by_its_error(client, form):
    FieldFactory(form=form, name="meals", label="Meals", type="multiple_choice", choices=["Fish", "Pasta"])

    tree = parse_html(client.post("/f/booking-test/", {"email": "ann@example.com", "meals": ["Soup"]}).content.decode())

    fieldset = next(elements(tree, "fieldset"))
    assert attribute(fieldset, "aria-describedby") == "id_meals_error"
    assert "Meals" in str(next(elements(fieldset, "legend")))
    boxes = [box for box in elements(fieldset, "input") if attribute(box, "type") == "checkbox"]
    assert boxes and all(attribute(box, "aria-invalid") == "true" for box in boxes)
    assert [attribute(link, "href") for link in elements(by_id(tree, "error-summary"), "a")] == ["#id_meals_0"]
