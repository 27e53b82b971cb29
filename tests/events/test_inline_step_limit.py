"""A step run in the submit request waits at most EVENTS_INLINE_STEP_MAX_SECONDS for any one thing.

So that the request ends well within the web server's timeout (EVENTS_WEB_TIMEOUT_SECONDS, gunicorn's
--timeout): an inline pause sleeps at most that long, an inline HTTP request gets it as its connect and
read timeouts and, redirects included, in all. The same steps in the background keep their own config.
"""

import time

import pytest

from events.models import RunTask
from tests.factories import add_node
from tests.support.servers import QuietHandler, recording_server

LIMIT = 0.2


@pytest.fixture
def inline_limit(settings):
    settings.EVENTS_INLINE_STEP_MAX_SECONDS = LIMIT
    return LIMIT


class Late(QuietHandler):
    """Answers after a while; the step may have given up by then."""

    def late_answer(self, seconds, status, body, headers):
        time.sleep(seconds)
        try:
            self.answer(status, body, headers)
        except (BrokenPipeError, ConnectionResetError):
            pass


def slow_handler(seconds):
    class Slow(Late):
        def do_GET(self):
            self.late_answer(seconds, 200, b'{"late": true}', {"Content-Type": "application/json"})

    return Slow


class SlowRedirects(Late):
    """Each request answers a redirect to the next one, a little later: a chain longer than the limit."""

    def do_GET(self):
        hop = int(self.path.strip("/") or 0)
        self.late_answer(LIMIT / 4, 302, b"", {"Location": f"/{hop + 1}"})


def test_an_inline_pause_is_cut_to_the_limit_and_its_log_says_so(form, submit, inline_limit):
    add_node(form, "pause", name="wait", config={"seconds": 30})
    add_node(form, "set_flag", name="after", config={"flag": "woke"})

    outcome = submit({"email": "ann@example.com"})

    wait = outcome.task("wait")
    assert wait.status == RunTask.Status.COMPLETE
    assert wait.output == {"slept_seconds": LIMIT}
    assert any(f"the pause cut from 30 s to {LIMIT:g} s" in log["line"] for log in wait.logs)
    assert outcome.record.flags == {"woke": True}


def test_a_pause_in_the_background_keeps_its_seconds(form, submit, inline_limit):
    background = add_node(form, "background", name="later")
    add_node(form, "pause", parent=background, name="wait", config={"seconds": 2 * LIMIT})

    outcome = submit({"email": "ann@example.com"})

    wait = outcome.task("wait")
    assert wait.status == RunTask.Status.COMPLETE
    assert wait.output == {"slept_seconds": 2 * LIMIT}
    assert not any("cut from" in log["line"] for log in wait.logs)


def test_an_inline_http_request_times_out_at_the_limit_and_its_log_says_so(
    form, submit, inline_limit, allow_local_http
):
    with recording_server(slow_handler(5 * LIMIT)) as server:
        add_node(
            form,
            "http_request",
            name="call",
            config={"method": "GET", "url": server.url, "timeout_seconds": 30, "connect_timeout_seconds": 20},
        )

        outcome = submit({"email": "ann@example.com"})

    call = outcome.task("call")
    assert call.status == RunTask.Status.FAILED
    assert "Timeout" in call.error
    lines = [log["line"] for log in call.logs]
    assert any(f"the read timeout cut from 30 s to {LIMIT:g} s" in line for line in lines), lines
    assert any(f"the connect timeout cut from 20 s to {LIMIT:g} s" in line for line in lines), lines


def test_an_http_request_in_the_background_waits_as_configured(form, submit, inline_limit, allow_local_http):
    with recording_server(slow_handler(2 * LIMIT)) as server:
        background = add_node(form, "background", name="later")
        add_node(
            form,
            "http_request",
            parent=background,
            name="call",
            config={"method": "GET", "url": server.url, "timeout_seconds": 30},
        )

        outcome = submit({"email": "ann@example.com"})

    call = outcome.task("call")
    assert call.status == RunTask.Status.COMPLETE, call.error
    assert call.output["json"] == {"late": True}


def test_an_inline_http_request_stops_following_redirects_once_the_limit_is_spent(
    form, submit, inline_limit, allow_local_http
):
    with recording_server(SlowRedirects) as server:
        add_node(
            form,
            "http_request",
            name="call",
            config={"method": "GET", "url": server.url + "/0", "timeout_seconds": 30, "max_redirects": 20},
        )

        outcome = submit({"email": "ann@example.com"})

    # Each hop alone is quick: without the limit in all, the step would follow 20 of them and fail
    # "stopped after 20 redirects". The limit ends it sooner: the next hop is not sent, or times out.
    call = outcome.task("call")
    assert call.status == RunTask.Status.FAILED
    assert (
        call.error == f"Gave up: the request's {LIMIT:g} s were spent before it could be sent (redirects)."
        or "ReadTimeout" in call.error
    ), call.error
    sent = [log["line"] for log in call.logs if log["line"].startswith("GET ")]
    assert 2 <= len(sent) < 20, sent
