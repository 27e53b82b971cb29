"""The tree page in a real browser: an admin builds the "contact" tree there, and a visitor's run completes.

The tree, like the neatComponents example of issue 11: Update Field and Set Flag inline, a Background
with an update and an email, a Delay with an email. It is built from an empty tree using only the tree
page: each node is one "+" (which opens the type menu without a request), one type (the node's form in
a dialog) and one Save (the tree swapped in place). Every request the admin's page makes is counted;
the README quotes the count. Then a visitor submits the form and the waiting page turns done, with a
real worker process running the background and delayed steps.
"""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from events.models import Node, Run, RunTask
from forms_app.models import Record
from tests.factories import FieldFactory, FormFactory, add_node

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e"), pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-enough-password-for-admin"
DONE_TIMEOUT_MS = 30_000
# The requests the admin's page makes to build the contact tree: opening the tree page, then for
# each of the 7 nodes one for its form and one to save it. The README says so (## Admin).
CONTACT_TREE_REQUESTS = 15


@pytest.fixture
def contact(transactional_db):
    """The contact form: its fields (an email to write to, a hidden field to update), and no tree yet."""
    form = FormFactory(slug="contact", title="Contact us", poll_seconds=1, done_message="Thanks, {{ record.name }}")
    FieldFactory(form=form, name="name", label="Name", type="text", required=True)
    FieldFactory(form=form, name="email", label="Email", type="email", required=True)
    FieldFactory(form=form, name="status", label="Status", type="hidden")
    return form


def log_in(page, live_server):
    get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("[name=username]", "admin")
    page.fill("[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("[type=submit]")


class Requests:
    """The requests the admin's page sends to the server: pages and htmx calls, not static files."""

    def __init__(self, page, live_server):
        self.urls = []
        admin = f"{live_server.url}/admin/"
        page.on(
            "request",
            lambda request: (
                self.urls.append(f"{request.method} {request.url}") if request.url.startswith(admin) else None
            ),
        )


def add(page, slot, type_key, fields, *, selects=None, checks=()):
    """One node: "+" at ``slot`` (its aria-label), the type, the fields, Save. Waits for the tree swap."""
    page.click(f'[aria-label="{slot}"]')
    page.wait_for_selector("#events-type-menu[open]")
    page.click(f"#events-type-{type_key}")
    page.wait_for_selector("#events-dialog[open] form.events-node-form")
    for name, value in fields.items():
        page.fill(f"#events-dialog [name={name}]", value)
    for name, value in (selects or {}).items():
        page.select_option(f"#events-dialog [name={name}]", value)
    for name in checks:
        page.check(f"#events-dialog [name={name}]")
    with page.expect_response(lambda response: "/builder/" in response.url and response.request.method == "POST"):
        page.click("#events-dialog [type=submit]")
    page.wait_for_selector("#events-dialog:not([open])", state="attached")
    label = fields["label"]
    page.wait_for_selector(f".events-label:text-is('{label}')")
    assert page.inner_text("#events-tree-message").startswith(f"Added “{label}”")
    # The keyboard focus is on the new node's Edit button: the admin can go on from there.
    assert page.evaluate("document.activeElement.textContent") == "Edit"


def publish(page, *, version):
    """Review and publish from the tree page: the impact preview, then Publish; back on the tree page."""
    with page.expect_navigation():
        page.click("#events-review-publish")
    assert "Runs in flight finish on the version they started with" in page.inner_text("#events-impact-sentence")
    with page.expect_navigation():
        page.click("#events-publish")
    assert page.inner_text("#events-tree-message").startswith(f"Published version {version}")
    assert f"Live: version {version}" in page.inner_text("#events-versions")


def shape(form):
    def plain(nodes):
        return [(node["type"], node["label"], plain(node["children"])) for node in nodes]

    return plain(Node.objects.snapshot(form))


def test_the_contact_tree_is_built_on_the_tree_page_and_a_submission_completes(live_server, worker, contact, page):
    log_in(page, live_server)
    requests = Requests(page, live_server)
    page.goto(f"{live_server.url}{reverse('admin:events_node_overview', args=[contact.pk, 'record_update'])}")
    page.evaluate("window.__builderMarker = 'still here'")
    assert page.title().startswith("Event tree of “Contact us”: record_update")

    add(page, "Add the first step", "update_field", {"label": "Mark received", "config_value": "received"},
        selects={"config_field": "status"})  # fmt: skip
    add(page, "Add a step after “Mark received”", "set_flag", {"label": "Flag received", "config_flag": "received"})
    add(page, "Add a step after “Flag received”", "background", {"label": "Confirm"})
    add(page, "Add a step into “Confirm”", "update_field", {"label": "Mark confirmed", "config_value": "confirmed"},
        selects={"config_field": "status"})  # fmt: skip
    add(page, "Add a step after “Mark confirmed”", "send_email",
        {"label": "Confirmation", "config_to": "{{ record.email }}", "config_subject": "We got your message",
         "config_body": "Thanks, {{ record.name }}."}, checks=["visible"])  # fmt: skip
    add(page, "Add a step after “Confirm”", "delay", {"label": "A bit later", "config_after_seconds": "1"},
        selects={"config_rule": "after"})  # fmt: skip
    add(page, "Add a step into “A bit later”", "send_email",
        {"label": "Follow-up", "config_to": "{{ record.email }}", "config_subject": "Still there?",
         "config_body": "Anything else?"})  # fmt: skip

    assert page.evaluate("window.__builderMarker") == "still here"  # one page all along
    assert shape(contact) == [
        ("update_field", "Mark received", []),
        ("set_flag", "Flag received", []),
        ("background", "Confirm", [("update_field", "Mark confirmed", []), ("send_email", "Confirmation", [])]),
        ("delay", "A bit later", [("send_email", "Follow-up", [])]),
    ]
    assert len(requests.urls) == CONTACT_TREE_REQUESTS, "\n".join(requests.urls)
    # Each save swapped the versions bar too: the tree is a draft, and nothing runs it yet.
    bar = page.inner_text("#events-versions")
    assert "Never published" in bar and "Draft: 7 changes not published" in bar

    publish(page, version=1)

    page.goto(f"{live_server.url}/f/contact/")
    page.fill("[name=name]", "Ada")
    page.fill("[name=email]", "ada@example.com")
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.wait_for_selector('#status[data-state="done"]', timeout=DONE_TIMEOUT_MS)

    record = Record.objects.get(form=contact)
    run = Run.objects.get(record=record, is_submission=True)
    assert run.status == Run.Status.COMPLETE
    assert set(run.tasks.values_list("status", flat=True)) == {RunTask.Status.COMPLETE}
    assert run.tasks.count() == 7
    assert record.data["status"] == "confirmed" and record.flags == {"received": True}
    assert page.locator("#status .message.done").inner_text().strip() == "Thanks, Ada"


def test_the_tree_page_works_from_the_keyboard_and_keeps_the_admins_place(live_server, contact, page):
    first = add_node(contact, "update_field", label="First", config={"field": "status", "value": "a"})
    box = add_node(contact, "background", label="Box")
    add_node(contact, "set_flag", parent=box, label="Inside", config={"flag": "x", "value": True})
    last = add_node(contact, "set_flag", label="Last", config={"flag": "y", "value": True})
    log_in(page, live_server)
    page.goto(f"{live_server.url}{reverse('admin:events_node_overview', args=[contact.pk, 'record_update'])}")
    page.evaluate("window.__builderMarker = 'still here'")

    # Into the container above with the keyboard: the tree is swapped, and as "into" is gone (no
    # container above it now) the focus goes to the node's Edit button. Out again, then up: the
    # focus stays on the same button.
    page.focus(f"#node-{last.pk}-into")
    page.keyboard.press("Enter")
    page.wait_for_selector("#events-tree-message:has-text('Moved “Last” into “Box”.')")
    assert page.evaluate("document.activeElement.id") == f"node-{last.pk}-edit"
    page.focus(f"#node-{last.pk}-out")
    page.keyboard.press("Enter")
    page.wait_for_selector("#events-tree-message:has-text('Moved “Last” out of “Box”.')")
    page.focus(f"#node-{last.pk}-up")
    page.keyboard.press("Enter")
    page.wait_for_selector("#events-tree-message:has-text('Moved “Last” up.')")
    assert page.evaluate("document.activeElement.id") == f"node-{last.pk}-up"
    assert [node.display_label() for node in Node.objects.of_tree(contact)] == ["First", "Last", "Box", "Inside"]

    # Edit in a dialog: Escape closes it and nothing changes; Save swaps the tree and the focus comes back.
    page.focus(f"#node-{first.pk}-edit")
    page.keyboard.press("Enter")
    page.wait_for_selector("#events-dialog[open] #id_label")
    assert page.evaluate("document.activeElement.id") == "id_label"
    page.keyboard.press("Escape")
    page.wait_for_selector("#events-dialog:not([open])", state="attached")
    page.focus(f"#node-{first.pk}-edit")
    page.keyboard.press("Enter")
    page.wait_for_selector("#events-dialog[open] #id_label")
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type("Renamed")
    page.keyboard.press("Enter")
    page.wait_for_selector("#events-tree-message:has-text('Saved “Renamed”.')")
    assert page.locator(f"#node-{first.pk} .events-label").inner_text() == "Renamed"
    assert page.evaluate("document.activeElement.id") == f"node-{first.pk}-edit"

    # A failed save keeps the dialog open, with what was typed and the focus on the field in error.
    page.click(f"#node-{first.pk}-edit")
    page.wait_for_selector("#events-dialog[open] #id_config_field")
    page.select_option("#id_config_field", "")
    page.fill("#id_config_value", "kept")
    page.evaluate("document.querySelector('#events-dialog form').noValidate = true")
    page.click("#events-dialog [type=submit]")
    page.wait_for_selector("#events-dialog[open] .errornote")
    assert page.input_value("#id_config_value") == "kept"
    page.wait_for_selector("#id_config_field:focus")  # once htmx settled
    page.keyboard.press("Escape")

    # A container folds, and stays folded when the tree is swapped.
    page.click(f"#node-{box.pk}-steps > summary")
    assert not page.is_visible(".events-label:text-is('Inside')")
    page.click(f"#node-{first.pk}-down")
    page.wait_for_selector("#events-tree-message:has-text('Moved “Renamed” down.')")
    assert page.get_attribute(f"#node-{box.pk}-steps", "open") is None

    # Delete, confirmed in the dialog: the node and its steps go.
    page.click(f"#node-{box.pk}-delete")
    page.wait_for_selector("#events-dialog[open] .events-confirm-delete")
    page.click("#events-dialog [type=submit]")
    page.wait_for_selector("#events-tree-message:has-text('Deleted “Box” and the 1 node under it.')")
    assert [node.display_label() for node in Node.objects.of_tree(contact)] == ["Last", "Renamed"]
    assert page.evaluate("window.__builderMarker") == "still here"


def test_a_conditions_rules_are_rows_added_and_removed_in_place(live_server, contact, page):
    add_node(contact, "set_flag", label="Paid", config={"flag": "paid", "value": True})
    log_in(page, live_server)
    page.goto(f"{live_server.url}{reverse('admin:events_node_overview', args=[contact.pk, 'record_update'])}")
    page.click('[aria-label="Add a step after “Paid”"]')
    page.click("#events-type-condition")
    page.wait_for_selector("#events-dialog[open] [data-events-rows]")
    rows = page.locator("#events-dialog tr[data-events-row]")
    assert [rows.nth(index).is_visible() for index in range(5)] == [True, False, False, False, False]
    requests = Requests(page, live_server)

    page.fill("#events-dialog [name=label]", "Paid or marked")
    page.select_option("#id_config_field_1", "status")
    page.select_option("#id_config_operator_1", "is_set")
    page.click("#events-dialog [data-events-add-row]")
    assert rows.nth(1).is_visible()
    assert page.evaluate("document.activeElement.id") == "id_config_field_2"
    page.select_option("#id_config_field_2", "flags.paid")  # the form's flags are offered with its fields
    page.select_option("#id_config_operator_2", "is_set")
    page.click("#events-dialog [aria-label='Remove rule 1']")
    assert not rows.nth(0).is_visible() and rows.nth(1).is_visible()
    assert page.input_value("#id_config_field_1") == ""
    assert requests.urls == []  # rows come and go without a request
    page.click("#events-dialog [type=submit]")
    page.wait_for_selector("#events-tree-message:has-text('Added “Paid or marked”')")

    condition = Node.objects.get(label="Paid or marked")
    assert condition.config == {"match": "all", "rules": [{"field": "flags.paid", "operator": "is_set"}]}
    assert page.locator(f"#node-{condition.pk} .events-summary").inner_text() == "flags.paid is set"
    assert len(requests.urls) == 1
