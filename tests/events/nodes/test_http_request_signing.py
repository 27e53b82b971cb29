"""Signed http_request steps, checked the way a receiver would: Standard Webhooks headers verified by a
local server that recomputes the signature itself (nothing from events.outbound is used to verify).
"""

import base64
import hashlib
import hmac
import http.client
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from events.models import RunTask
from events.nodes import registry
from events.nodes.base import NodeContext
from events.outbound import signing
from tests.factories import add_node
from tests.support.servers import QuietHandler, recording_server

HttpRequest = registry.get("http_request")
RAW_SECRET = "a raw secret, used as its UTF-8 bytes"
WHSEC_SECRET = "whsec_" + base64.b64encode(b"\x01" * 8 + b"thirty-two bytes of key!").decode()
TOLERANCE_SECONDS = 5 * 60


def verify(secret, headers, body, *, now):
    """A receiver's check, written from the Standard Webhooks spec: None when valid, else why not."""
    if secret.startswith("whsec_"):
        key = base64.b64decode(secret.removeprefix("whsec_"))
    else:
        key = secret.encode("utf-8")
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        return "missing headers"
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        return "timestamp outside the tolerance"
    mac = hmac.new(key, b"%s.%s.%s" % (message_id.encode(), timestamp.encode(), body), hashlib.sha256).digest()
    for entry in signatures.split(" "):
        version, _, encoded = entry.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(encoded), mac):
            return None
    return "no signature matches"


class Receiver:
    """A local server that answers 204 to a request whose signature verifies and 401 to any other."""

    def __init__(self, secret):
        self.secret = secret
        self.clock = time.time  # the receiver's idea of now
        self.received = []  # (headers, body, verdict)
        self.redirects = {}  # path -> Location: a verified request there is answered 303


def _receiver_handler(receiver):
    class Handler(QuietHandler):
        def _handle(self):
            body = self.read_body()
            headers = {name.lower(): value for name, value in self.headers.items()}
            verdict = verify(receiver.secret, headers, body, now=receiver.clock())
            receiver.received.append((headers, body, verdict))
            if verdict is None and self.path in receiver.redirects:
                self.answer(303, b"", {"Location": receiver.redirects[self.path]})
            elif verdict is None:
                self.answer(204, b"")
            else:
                self.answer(401, verdict.encode(), {"Content-Type": "text/plain"})

        do_GET = do_POST = do_PUT = _handle

    return Handler


@pytest.fixture(params=[RAW_SECRET, WHSEC_SECRET], ids=["raw-secret", "whsec-secret"])
def receiver(request, settings, allow_local_http):
    settings.EVENTS_HTTP_SIGNING_SECRET = request.param
    receiver = Receiver(request.param)
    with recording_server(_receiver_handler(receiver)) as server:
        receiver.url, receiver.port = server.url, server.port
        yield receiver


def replay(receiver, headers, body, path="/hook"):
    """Send a request to the receiver again, as an attacker who captured it would; returns the status."""
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    try:
        sent = {name: value for name, value in headers.items() if name not in ("host", "content-length")}
        connection.request("POST", path, body=body, headers=sent)
        return connection.getresponse().status
    finally:
        connection.close()


def add_signed_request(form, url, **config):
    return add_node(
        form, "http_request", name="call", config={"method": "POST", "url": url, "fail_on_status": True, **config}
    )


# A receiver accepts what a step sends -----------------------------------------------------


def test_a_receiver_verifies_the_signature_of_a_step(form, submit, receiver):
    add_signed_request(form, receiver.url + "/hook", body='{"email": "{{ record.email }}", "é": 1}')

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.COMPLETE, task.error
    [(headers, body, verdict)] = receiver.received
    assert verdict is None
    assert json.loads(body) == {"email": "ann@example.com", "é": 1}
    assert headers["webhook-id"] == headers["idempotency-key"] == str(task.pk)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", headers["webhook-signature"])


def test_a_body_less_request_is_signed_over_the_empty_body(form, submit, receiver):
    add_signed_request(form, receiver.url + "/hook", method="GET")

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    [(_, body, verdict)] = receiver.received
    assert body == b"" and verdict is None


def test_a_waiting_request_signs_its_default_json_body(form, submit, receiver):
    add_signed_request(form, receiver.url + "/start", wait_for_callback=True)

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.AWAITING
    [(headers, body, verdict)] = receiver.received
    assert verdict is None
    assert json.loads(body)["taskId"] == headers["webhook-id"] == str(task.pk)


def test_configured_signature_headers_cannot_replace_the_real_ones(form, submit, receiver):
    add_signed_request(
        form,
        receiver.url + "/hook",
        body="x",
        headers={"webhook-id": "forged.id", "webhook-timestamp": "1", "webhook-signature": "v1,Zm9yZ2Vk"},
    )

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    [(headers, _, verdict)] = receiver.received
    assert verdict is None
    assert headers["webhook-id"] == str(outcome.task("call").pk)


def test_a_redirect_that_drops_the_body_is_signed_again(form, submit, receiver):
    receiver.redirects["/start"] = "/next"
    add_signed_request(form, receiver.url + "/start", body="payload")

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    (_, first_body, first_verdict), (_, second_body, second_verdict) = receiver.received
    assert (first_body, first_verdict) == (b"payload", None)
    assert (second_body, second_verdict) == (b"", None)


def test_every_attempt_keeps_the_id_and_signs_its_own_time(form, submit, receiver, monkeypatch):
    node = add_signed_request(form, receiver.url + "/hook", body="x")
    outcome = submit({"email": "ann@example.com"})
    task = outcome.task("call")
    later = time.time() + 120
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: later))

    # A retry executes the same task again.
    ctx = NodeContext(
        run=outcome.run,
        task=task,
        record=outcome.record,
        node={"id": node.pk, "type": "http_request", "config": node.config},
    )
    HttpRequest().execute(ctx)

    (first, _, first_verdict), (second, _, second_verdict) = receiver.received
    assert first_verdict is None and second_verdict is None
    assert first["webhook-id"] == second["webhook-id"] == str(task.pk)
    assert int(second["webhook-timestamp"]) == int(later) > int(first["webhook-timestamp"])


# A receiver refuses what was changed or replayed ------------------------------------------


def test_a_tampered_body_is_refused(form, submit, receiver):
    add_signed_request(form, receiver.url + "/hook", body='{"amount": 10}')
    submit({"email": "ann@example.com"})
    [(headers, body, _)] = receiver.received

    assert replay(receiver, headers, body) == 204  # the captured request, unchanged, verifies
    assert replay(receiver, headers, body.replace(b"10", b"99")) == 401
    assert receiver.received[-1][2] == "no signature matches"


def test_an_old_request_is_refused_even_with_its_own_valid_signature(form, submit, receiver):
    add_signed_request(form, receiver.url + "/hook", body='{"amount": 10}')
    submit({"email": "ann@example.com"})
    [(headers, body, _)] = receiver.received

    receiver.clock = lambda: int(headers["webhook-timestamp"]) + TOLERANCE_SECONDS + 1
    assert replay(receiver, headers, body) == 401
    assert receiver.received[-1][2] == "timestamp outside the tolerance"


def test_a_replay_with_a_fresh_timestamp_is_refused(form, submit, receiver):
    add_signed_request(form, receiver.url + "/hook", body='{"amount": 10}')
    submit({"email": "ann@example.com"})
    [(headers, body, _)] = receiver.received

    receiver.clock = lambda: int(headers["webhook-timestamp"]) + 3600
    refreshed = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 3600)}
    assert replay(receiver, refreshed, body) == 401
    assert receiver.received[-1][2] == "no signature matches"


def test_a_request_signed_with_another_secret_is_refused(form, submit, receiver, settings):
    settings.EVENTS_HTTP_SIGNING_SECRET = "whsec_" + base64.b64encode(b"another key, another sender!").decode()
    add_signed_request(form, receiver.url + "/hook", body="x")

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.FAILED
    assert receiver.received[-1][2] == "no signature matches"


# The secret, the spec's own vector, and no secret -----------------------------------------


def test_signing_reproduces_the_standard_webhooks_test_vector():
    # The vector published with the Standard Webhooks libraries.
    key = signing.signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")

    headers = signing.webhook_headers(
        key=key, message_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=b'{"test": 2432232314}'
    )

    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_a_whsec_secret_that_is_not_base64_fails_the_step_before_sending(
    form, submit, settings, allow_local_http, http_server
):
    settings.EVENTS_HTTP_SIGNING_SECRET = "whsec_not base64!"
    add_signed_request(form, http_server.url + "/hook", body="x")

    outcome = submit({"email": "ann@example.com"})

    assert http_server.requests == []
    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "EVENTS_HTTP_SIGNING_SECRET" in task.error and "base64" in task.error


def test_no_signature_headers_without_a_secret(form, submit, settings, allow_local_http, http_server):
    settings.EVENTS_HTTP_SIGNING_SECRET = ""
    add_signed_request(form, http_server.url + "/hook", body="x")

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    sent = {name.lower() for name in http_server.requests[0]["headers"]}
    assert not sent & {"webhook-id", "webhook-timestamp", "webhook-signature", "x-signature"}
    assert "idempotency-key" in sent


# The README's receiver ---------------------------------------------------------------------


def readme_receiver():
    """The receiver example of the README's http_request section, as a function ``verify_webhook``."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    blocks = [
        block for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "def verify_webhook(" in block
    ]
    assert len(blocks) == 1, "the README shows one receiver example"
    namespace = {}
    exec(blocks[0], namespace)  # noqa: S102 - our own README
    return namespace


@pytest.mark.parametrize("secret", [RAW_SECRET, WHSEC_SECRET], ids=["raw-secret", "whsec-secret"])
def test_the_readme_receiver_accepts_a_step_and_refuses_tampering_and_old_requests(
    form, submit, settings, allow_local_http, http_server, secret
):
    settings.EVENTS_HTTP_SIGNING_SECRET = secret
    add_signed_request(form, http_server.url + "/hook", body='{"amount": 10}')
    submit({"email": "ann@example.com"})
    received = http_server.requests[0]
    headers, body = {name.lower(): value for name, value in received["headers"].items()}, received["body"]
    example = readme_receiver()
    example["SECRET"] = secret
    stamped = int(headers["webhook-timestamp"])

    assert example["verify_webhook"](headers, body) is True
    assert example["verify_webhook"](headers, body.replace(b"10", b"99")) is False
    assert example["verify_webhook"]({**headers, "webhook-timestamp": str(stamped + 1)}, body) is False
    example["time"] = SimpleNamespace(time=lambda: stamped + TOLERANCE_SECONDS + 1)  # the example's clock only
    assert example["verify_webhook"](headers, body) is False
