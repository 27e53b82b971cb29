"""The Content Security Policy (config/settings.py, SECURE_CSP) in a real browser: nothing it refuses.

Debian's chromium loads the public form, the waiting page (htmx polling and swapping under the
policy), the error pages (404, 500) and the favicon, Django admin (its pages, the tree editor, the
run timeline, a new API key's page with its nonce'd script, the form file import page) and the API's
Swagger UI at /api/docs. Every ``securitypolicyviolation`` event and
every console message about the policy is collected; the tests assert there are none, and that the
scripts the policy lets through did run (htmx polled, Swagger drew the operations, the key selects
itself on focus).
"""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from events import engine
from events.models import Run
from events.testrun.replay import replay_start
from forms_app import views
from forms_app.models import Record
from tests.factories import FieldFactory, FormFactory, add_node

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e"), pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-enough-password-for-admin"
# Kept on the page from its first script on, for every document the page loads.
COLLECT_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.effectiveDirective} refused ${event.blockedURI || "inline"} `
                              + `at ${event.sourceFile}:${event.lineNumber}: ${event.sample}`);
});
"""


class Violations:
    """What the policy refused on ``page``: its violation events (per document) and console messages."""

    def __init__(self, page):
        self.page = page
        self.console = []
        page.add_init_script(COLLECT_VIOLATIONS)
        page.on("console", self.on_console)

    def on_console(self, message):
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.console.append(f"{message.type}: {message.text}")

    def assert_none(self, where):
        events = self.page.evaluate("window.__cspViolations || []")
        assert events == [] and self.console == [], f"{where}: the CSP refused\n" + "\n".join(events + self.console)


@pytest.fixture
def violations(page):
    return Violations(page)


@pytest.fixture
def slow_form(transactional_db):
    """A form whose run stays working (a delay due in ten minutes): its waiting page polls every second."""
    form = FormFactory(slug="csp", title="Policy check", poll_seconds=1)
    FieldFactory(form=form, name="email", label="Email", type="email", required=True)
    add_node(form, "set_subtext", name="start", config={"text": "Started"})
    add_node(form, "delay", name="later", label="Later", visible=True, config={"after_seconds": 600})
    return form


def assert_policy_header(response):
    """The policy is on, enforced, and lets no inline script or style through but a nonce'd one."""
    policy = response.headers.get("content-security-policy", "")
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"].split(" ")[0] == "'self'", policy
    assert all(
        value == "'self'" or value.startswith("'nonce-")
        for name in ("script-src", "style-src")
        for value in directives[name].split(" ")
    ), policy


def test_the_public_form_and_the_polling_waiting_page_pass_the_policy(live_server, slow_form, page, violations):
    response = page.goto(f"{live_server.url}/f/csp/")
    assert_policy_header(response)
    violations.assert_none("the public form")

    page.fill("[name=email]", "ann@example.com")
    with page.expect_navigation():
        page.click("button[type=submit]")
    record = Record.objects.get(form=slow_form)
    assert page.url == f"{live_server.url}{record.get_absolute_url()}"
    assert page.locator("#status .subtext").inner_text() == "Started"

    polls = []
    page.on("response", lambda answer: polls.append(answer.status) if "/status/" in answer.url else None)
    # The live region stays the same element through every swap (only the section inside it is replaced).
    page.evaluate("document.getElementById('status-region').dataset.kept = 'yes'")
    assert page.title() == page.locator("#page-heading").inner_text() == slow_form.waiting_title
    run = Run.objects.get(record=record)
    Run.objects.filter(pk=run.pk).update(subtext="Halfway there")
    page.wait_for_selector("#status .subtext:text('Halfway there')", timeout=15_000)  # htmx polled and swapped

    engine.run_cancel(run=run)
    page.wait_for_selector("#status:not([hx-trigger])", timeout=15_000)  # the final markup: polling stops
    assert polls and set(polls) <= {200, 204} and 200 in polls, polls  # 204: nothing new, nothing swapped
    assert page.locator("#status-region[data-kept=yes][aria-live=polite] > #status").count() == 1
    # The title and the heading changed with the poll that brought the end.
    ended = "The processing of your submission was cancelled"
    assert page.title() == ended
    assert page.locator("h1").all_inner_texts() == [ended]
    violations.assert_none("the waiting page")


def test_the_error_pages_and_the_favicon_pass_the_policy(live_server, slow_form, page, violations, monkeypatch):
    icons = []
    page.on("response", lambda answer: icons.append((answer.url, answer.status)) if "favicon" in answer.url else None)

    response = page.goto(f"{live_server.url}/f/no-such-form/")
    assert response.status == 404
    assert_policy_header(response)
    assert page.locator("h1").inner_text() == "This page does not exist"
    page.wait_for_load_state("networkidle")
    violations.assert_none("the 404 page")

    def fails(token):
        raise RuntimeError("the waiting page broke")

    monkeypatch.setattr(views, "submission_of", fails)
    response = page.goto(f"{live_server.url}/r/some-token/")
    assert response.status == 500
    assert page.locator("h1").inner_text() == "Something went wrong on our side"
    page.wait_for_load_state("networkidle")
    violations.assert_none("the 500 page")

    # The site's stylesheet applied (not the browser's defaults), and the icon loaded.
    assert page.evaluate("getComputedStyle(document.querySelector('main.page')).maxWidth") == "640px"
    assert page.goto(f"{live_server.url}/favicon.ico").status == 200
    assert all(status == 200 for url, status in icons), icons


def test_admin_passes_the_policy(live_server, slow_form, page, violations):
    get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)
    record = Record.objects.create(form=slow_form, data={"email": "ann@example.com"})
    run = engine.run_start(record=record, is_submission=True)
    replay = replay_start(form=slow_form, record_ids=[record.pk])  # queued: its page polls its progress

    assert_policy_header(page.goto(f"{live_server.url}/admin/login/"))
    page.fill("[name=username]", "admin")
    page.fill("[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("[type=submit]")
    violations.assert_none("the admin login")

    for where in [
        reverse("admin:index"),
        reverse("admin:forms_app_form_changelist"),
        reverse("admin:forms_app_form_change", args=[slow_form.pk]),
        reverse("admin:events_node_changelist") + f"?form__id__exact={slow_form.pk}&event=record_update",
        reverse("admin:events_node_overview", kwargs={"form_id": slow_form.pk, "event": "record_update"}),
        reverse("admin:events_run_changelist"),
        reverse("admin:events_run_change", args=[run.pk]),
        reverse("admin:events_runtask_changelist"),
        reverse("admin:forms_app_form_import"),
        reverse("admin:events_node_publish", args=[slow_form.pk]) + "?event=record_update",
        reverse("admin:events_node_tree_history", args=[slow_form.pk]) + "?event=record_update&base=1&other=draft",
        reverse("admin:events_testrun", args=[slow_form.pk, "record_update"]),
        reverse("admin:events_replay_change", args=[replay.pk]),
    ]:
        response = page.goto(f"{live_server.url}{where}")
        assert response.status == 200, where
        page.wait_for_load_state("load")
        violations.assert_none(where)

    # A test run's result on its page (the timeline, the captured email and request).
    page.goto(f"{live_server.url}{reverse('admin:events_testrun', args=[slow_form.pk, 'record_update'])}")
    with page.expect_navigation():
        page.click("[name=run]")
    assert "Result: draft" in page.inner_text("#testrun-result")
    violations.assert_none("a test run's result")

    # The form file import page, showing the problems of a bad file, then importing a good one.
    page.goto(f"{live_server.url}{reverse('admin:forms_app_form_import')}")
    page.fill(
        "[name=text]", '{"form": {"slug": "csp", "title": "Policy check", "fields": [{"name": "x", "type": "colour"}]}}'
    )
    with page.expect_navigation():
        page.click(".submit-row [type=submit]")
    assert "form.fields[0].type" in page.locator("#formfile-problems").inner_text()
    violations.assert_none("the form file import page with problems")
    page.fill("[name=text]", '{"form": {"slug": "imported", "title": "Imported"}}')
    with page.expect_navigation():
        page.click(".submit-row [type=submit]")
    assert "Created form “imported”" in page.locator(".messagelist").inner_text()
    violations.assert_none("the form after an import")

    # A new API key's page: its inline script (with the request's nonce) selects the key on focus.
    page.goto(f"{live_server.url}{reverse('admin:events_apikey_add')}")
    page.fill("[name=name]", "policy-check")
    with page.expect_navigation():
        page.click("[name=_save]")
    violations.assert_none("the new API key's page")
    page.focus(".events-raw-key")
    assert page.evaluate("document.activeElement.selectionEnd") == len(page.input_value(".events-raw-key")) > 0


def test_the_tree_page_and_its_dialogs_pass_the_policy(live_server, slow_form, page, violations):
    """The tree page is the editor: htmx swaps dialogs and the tree, a static script opens the dialogs."""
    get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("[name=username]", "admin")
    page.fill("[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("[type=submit]")
    later = slow_form.nodes.get(name="later")

    response = page.goto(
        f"{live_server.url}{reverse('admin:events_node_overview', args=[slow_form.pk, 'record_update'])}"
    )
    assert_policy_header(response)
    page.click('[aria-label="Add a step into “Later”"]')  # the type menu: the builder's script ran
    page.click("#events-type-set_flag")
    page.wait_for_selector("#events-dialog[open] [name=config_flag]")  # htmx fetched the form and swapped it in
    page.fill("#events-dialog [name=label]", "Flag it")
    page.fill("#events-dialog [name=config_flag]", "checked")
    page.click("#events-dialog [type=submit]")
    page.wait_for_selector("#events-tree-message:has-text('Added “Flag it”')")
    page.click(f"#node-{later.pk}-up")
    page.wait_for_selector("#events-tree-message:has-text('Moved “Later” up.')")
    page.click(f"#node-{later.pk}-delete")
    page.wait_for_selector("#events-dialog[open] .events-confirm-delete")
    page.click("#events-dialog [data-events-close]")
    violations.assert_none("the tree page")
    assert [node.name or node.label for node in slow_form.nodes.order_by("path")] == ["later", "Flag it", "start"]


def test_the_api_docs_pass_the_policy(live_server, page, violations):
    response = page.goto(f"{live_server.url}/api/docs")

    assert_policy_header(response)
    page.wait_for_selector(".swagger-ui .opblock", timeout=15_000)  # Swagger UI's scripts ran and drew the API
    # Open an operation and try it out: its form shows the images Swagger UI's CSS holds as data: URLs.
    page.click("#operations-default-callback .opblock-summary-control")
    page.click("#operations-default-callback .try-out__btn")
    page.wait_for_selector("#operations-default-callback .execute", timeout=15_000)
    page.wait_for_load_state("networkidle")
    violations.assert_none("/api/docs")
