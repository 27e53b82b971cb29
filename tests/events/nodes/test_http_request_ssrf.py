"""http_request hardened: refused destinations, pinned connections, redirects, idempotency, signatures, size caps.

Every connection a test makes is recorded by ``connections``, which lets through only
loopback addresses: a refusal is proved by an empty record, and nothing leaves the machine.
"""

import hashlib
import hmac
import ipaddress
import json
import socket
import threading
import time

import httpx
import pytest
from django.core.exceptions import ValidationError

from events.models import RunTask
from events.nodes import registry
from events.nodes.base import NodeContext
from events.outbound import DestinationRefused
from events.outbound.guard import check_destination
from tests.factories import add_node
from tests.support.servers import QuietHandler, recording_server

HttpRequest = registry.get("http_request")


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


# Fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def connections(monkeypatch):
    """Every socket connect attempted, as (host, port). Only loopback ones really connect."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        attempts.append((address[0], address[1]))
        if ipaddress.ip_address(address[0]).is_loopback:
            return real_connect(self, address)
        raise ConnectionRefusedError(f"the test refuses to connect to {address[0]}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


class Site:
    """A local server with routes: path -> (status, headers, body). Unknown paths answer 200 "ok"."""

    def __init__(self):
        self.requests = []
        self.routes = {}

    def route(self, path, status=200, headers=None, body=b"ok"):
        self.routes[path] = (status, headers or {}, body)


def _site_handler(site):
    class Handler(QuietHandler):
        def _handle(self):
            site.requests.append(self.received(self.read_body()))
            status, headers, answer = site.routes.get(self.path.split("?")[0], (200, {}, b"ok"))
            self.answer(status, answer, headers)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


@pytest.fixture
def site():
    """A routed server on 127.0.0.1."""
    site = Site()
    with recording_server(_site_handler(site), "127.0.0.1") as server:
        site.port, site.url = server.port, server.url
        yield site


@pytest.fixture
def site6():
    """A routed server on ::1."""
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    site = Site()
    with recording_server(_site_handler(site), "::1") as server:
        site.port, site.url = server.port, server.url
        yield site


@pytest.fixture
def raw_server():
    """A TCP server on 127.0.0.1 that answers with ``raw_server.answer(conn)``, a function of the socket."""

    class Raw:
        answer = None

    raw = Raw()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.1)
    raw.url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    raw.answer(conn, stop)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield raw
    stop.set()
    thread.join(timeout=10)
    listener.close()


@pytest.fixture
def signing_secret(settings):
    settings.EVENTS_HTTP_SIGNING_SECRET = "whsec-test-1"
    return settings.EVENTS_HTTP_SIGNING_SECRET


def add_request(form, url, **config):
    return add_node(form, "http_request", name="call", config={"method": "GET", "url": url, **config})


# Refused before any connection ------------------------------------------------------------

REFUSED_HOSTS = [
    "127.0.0.1",
    "127.0.0.2",
    "[::1]",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "[fd00:ec2::254]",
    "100.100.100.200",
    "100.64.0.1",
    "0.0.0.0",
    "[::]",
    "224.0.0.1",
    "240.0.0.1",
    "[fe80::1]",
    "[fc00::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:10.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    "localhost",
    "2130706433",  # decimal 127.0.0.1
    "0177.0.0.1",  # octal
    "0x7f.1",  # hex, short form
    "0x7f000001",
    "017700000001",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_a_request_to_a_blocked_address_is_refused_before_connecting(
    form, submit, http_server, settings, connections, host
):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = []
    add_request(form, f"http://{host}:{http_server.port}/hook", method="POST", body="x")

    outcome = submit({"email": "ann@example.com"})

    assert connections == []
    assert http_server.requests == []
    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert task.error.startswith("Refused to connect")
    assert "EVENTS_HTTP_ALLOWED_HOSTS" in task.error


def test_a_refused_destination_fails_at_once_whatever_the_retry_policy(
    form, submit, http_server, settings, connections
):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = []
    add_node(
        form,
        "http_request",
        name="call",
        max_attempts=3,
        retry_backoff_seconds=0,
        config={"method": "GET", "url": f"http://127.0.0.1:{http_server.port}/"},
    )

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert (task.status, task.attempt) == (RunTask.Status.FAILED, 1)
    assert outcome.run.status == "failed"
    assert connections == []


def test_a_connection_error_is_left_to_the_retry_policy(form, submit, allow_local_http):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/"  # bound, never listening: refused
    add_node(
        form,
        "http_request",
        name="call",
        max_attempts=3,
        retry_backoff_seconds=60,
        config={"method": "GET", "url": url},
    )

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert "ConnectError" in " ".join(entry["line"] for entry in task.logs)
    assert task.status != RunTask.Status.FAILED  # waiting for its next attempt
    assert outcome.run.status != "failed"


@pytest.mark.parametrize("host", ["localhost", "2130706433", "0177.0.0.1", "0x7f.1", "[::ffff:127.0.0.1]", "127.0.0.2"])
def test_allowing_127_0_0_1_does_not_allow_other_names_for_loopback(
    form, submit, http_server, allow_local_http, connections, host
):
    add_request(form, f"http://{host}:{http_server.port}/")

    outcome = submit({"email": "ann@example.com"})

    assert connections == []
    assert http_server.requests == []
    assert outcome.task("call").error.startswith("Refused to connect")


def test_a_host_name_is_refused_when_any_of_its_addresses_is_blocked(monkeypatch, settings, connections):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"mixed.test": ["93.184.216.34", "10.0.0.1"]}))

    with pytest.raises(DestinationRefused, match="Refused to connect to mixed.test"):
        check_destination("http://mixed.test/")

    assert connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.1.1:8080/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
    ],
)
def test_the_allow_list_lets_a_named_host_through_the_check(settings, connections, url):
    host = url.split("//")[1].split("/")[0].rsplit(":", 1)[0] if "[" not in url else url.split("[")[1].split("]")[0]
    settings.EVENTS_HTTP_ALLOWED_HOSTS = [host]

    destination = check_destination(url)

    assert destination.addresses
    assert connections == []  # checked only: these addresses are not reachable from a test


@pytest.mark.parametrize("entry", ["10.0.0.1:9999", "[fd00:ec2::254]:1", "[FD00:EC2:0::254]", "fd00:ec2::254"])
def test_allow_list_entries_ignore_ports_and_ip_spelling_of_standard_literals(settings, entry):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = [entry]
    url = "http://10.0.0.1:8080/" if entry.startswith("10.") else "http://[fd00:ec2::254]:8080/"

    assert check_destination(url).addresses


def test_the_allow_list_is_exact_not_a_suffix_match(settings, monkeypatch):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["hooks.test"]
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"evil.hooks.test": ["10.0.0.1"]}))

    with pytest.raises(DestinationRefused, match="Refused"):
        check_destination("http://evil.hooks.test/")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1/", "http:///nohost", "http://h:99999/"])
def test_check_destination_refuses_what_is_not_an_http_url(url, connections):
    with pytest.raises(DestinationRefused):
        check_destination(url)

    assert connections == []


# Allowed when the allow-list names them ---------------------------------------------------


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_an_allowed_loopback_host_is_reached_with_its_own_host_header(form, submit, site, settings, connections, name):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = [name]
    add_request(form, f"http://{name}:{site.port}/hook?x=1")

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    [received] = site.requests
    assert received["path"] == "/hook?x=1"
    assert received["headers"]["Host"] == f"{name}:{site.port}"
    assert connections == [("127.0.0.1", site.port)]


def test_a_configured_host_header_is_replaced_by_the_checked_name(form, submit, site, allow_local_http):
    add_request(form, site.url + "/hook", headers={"Host": "internal.admin.test"})

    submit({"email": "ann@example.com"})

    assert site.requests[0]["headers"]["Host"] == f"127.0.0.1:{site.port}"


def test_an_allowed_ipv6_loopback_is_reached(form, submit, site6, settings, connections):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["::1"]
    add_request(form, f"{site6.url}/six")

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    assert [request["path"] for request in site6.requests] == ["/six"]
    assert connections[0][:2] == ("::1", site6.port)


def test_ipv6_loopback_is_refused_without_the_allow_list(form, submit, site6, settings, connections):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    add_request(form, f"{site6.url}/six")

    outcome = submit({"email": "ann@example.com"})

    assert site6.requests == [] and connections == []
    assert outcome.task("call").error.startswith("Refused to connect")


# DNS pinning ------------------------------------------------------------------------------


def fake_resolver(answers):
    """getaddrinfo that answers ``answers[host]`` (a list of addresses, or a list of such lists, one per call)."""
    real = socket.getaddrinfo
    calls = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        answer = answers[host]
        if answer and isinstance(answer[0], list):
            answer = answer[min(calls.get(host, 0), len(answer) - 1)]
        calls[host] = calls.get(host, 0) + 1
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (address, port, 0, 0) if ":" in address else (address, port),
            )
            for address in answer
        ]

    getaddrinfo.calls = calls
    return getaddrinfo


def test_the_connection_goes_to_the_checked_address_even_if_dns_changes_its_answer(
    form, submit, site, settings, monkeypatch, connections
):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["rebind.test"]
    resolver = fake_resolver({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    add_request(form, f"http://rebind.test:{site.port}/pinned")

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    assert resolver.calls == {"rebind.test": 1}
    assert connections == [("127.0.0.1", site.port)]
    [received] = site.requests
    assert received["headers"]["Host"] == f"rebind.test:{site.port}"


def test_a_rebinding_host_cannot_reach_loopback_after_passing_the_check(
    form, submit, site, settings, monkeypatch, connections
):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = []
    # First answer public (passes the check), every later one loopback.
    resolver = fake_resolver({"rebind.test": [["93.184.216.34"], ["127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    add_request(form, f"http://rebind.test:{site.port}/", timeout_seconds=1)

    outcome = submit({"email": "ann@example.com"})

    assert site.requests == []
    # The only attempt went to the checked address (the connections fixture refused it, off the machine).
    assert connections == [("93.184.216.34", site.port)]
    assert outcome.task("call").error.startswith(f"GET http://rebind.test:{site.port}/ failed: ConnectError")


def test_https_is_pinned_with_the_real_name_for_sni_and_the_host_header(form, submit, settings, monkeypatch):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["secure.test"]
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"secure.test": ["127.0.0.1"]}))
    sent = []

    def handle_request(transport, request):
        sent.append(request)
        return httpx.Response(200, content=b"ok")

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    add_request(form, "https://secure.test/path?q=1", timeout_seconds=7)

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    [request] = sent
    assert str(request.url) == "https://127.0.0.1/path?q=1"
    assert request.headers["Host"] == "secure.test"
    assert request.extensions["sni_hostname"] == "secure.test"
    assert request.extensions["timeout"] == {"connect": 5.0, "read": 7.0, "write": 7.0, "pool": 7.0}
    assert outcome.task("call").output["url"] == "https://secure.test/path?q=1"


def test_connect_timeout_is_configurable(form, submit, settings, monkeypatch):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    sent = []
    monkeypatch.setattr(
        httpx.HTTPTransport, "handle_request", lambda transport, request: sent.append(request) or httpx.Response(204)
    )
    add_request(form, "http://127.0.0.1:9/", connect_timeout_seconds=1.5)

    submit({"email": "ann@example.com"})

    assert sent[0].extensions["timeout"]["connect"] == 1.5
    # The read timeout is the configured 10 s, less what the request already spent of its total
    # (an inline step's requests share EVENTS_INLINE_STEP_MAX_SECONDS, 10 s by default).
    assert 9.0 < sent[0].extensions["timeout"]["read"] <= 10.0


def test_proxy_environment_variables_are_ignored(form, submit, site, allow_local_http, monkeypatch, connections):
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.9.9.9:3128")
    add_request(form, site.url + "/direct")

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    assert connections == [("127.0.0.1", site.port)]


# Redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/in",
        "http://localhost:{port}/in",
        "http://[::1]:{port}/in",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433:{port}/in",
    ],
)
def test_a_redirect_to_a_blocked_address_is_refused_before_connecting(
    form, submit, site, allow_local_http, connections, target
):
    target = target.format(port=site.port)
    site.route("/start", 302, {"Location": target})
    add_request(form, site.url + "/start")

    outcome = submit({"email": "ann@example.com"})

    assert [request["path"] for request in site.requests] == ["/start"]
    assert connections == [("127.0.0.1", site.port)]
    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert task.error.startswith("Refused to connect")


def test_redirects_are_followed_and_recorded(form, submit, site, allow_local_http):
    site.route("/a", 301, {"Location": "/b"})
    site.route("/b", 302, {"Location": site.url + "/c?z=1"})
    site.route("/c", 200, {"Content-Type": "application/json"}, b'{"done": true}')
    add_request(form, site.url + "/a")

    outcome = submit({"email": "ann@example.com"})

    assert [request["path"] for request in site.requests] == ["/a", "/b", "/c?z=1"]
    output = outcome.task("call").output
    assert output["status_code"] == 200 and output["json"] == {"done": True}
    assert output["url"] == site.url + "/c?z=1"
    assert output["redirects"] == [
        {"url": site.url + "/a", "status_code": 301, "location": site.url + "/b"},
        {"url": site.url + "/b", "status_code": 302, "location": site.url + "/c?z=1"},
    ]


def test_a_redirect_to_another_allowed_host_drops_credentials(form, submit, site, settings):
    settings.EVENTS_HTTP_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    site.route("/start", 307, {"Location": f"http://localhost:{site.port}/next"})
    add_request(form, site.url + "/start", headers={"Authorization": "Bearer t", "Cookie": "s=1", "X-Token": "keep"})

    submit({"email": "ann@example.com"})

    first, second = site.requests
    assert first["headers"]["Authorization"] == "Bearer t" and first["headers"]["Cookie"] == "s=1"
    assert "Authorization" not in second["headers"] and "Cookie" not in second["headers"]
    assert second["headers"]["X-Token"] == "keep"
    assert second["headers"]["Host"] == f"localhost:{site.port}"


def test_redirects_past_max_redirects_fail_the_step(form, submit, site, allow_local_http):
    for index in range(5):
        site.route(f"/{index}", 302, {"Location": f"/{index + 1}"})
    add_request(form, site.url + "/0", max_redirects=2)

    outcome = submit({"email": "ann@example.com"})

    assert [request["path"] for request in site.requests] == ["/0", "/1", "/2"]
    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "stopped after 2 redirects" in task.error


def test_a_redirect_loop_stops_at_the_default_of_five(form, submit, site, allow_local_http):
    site.route("/loop", 302, {"Location": "/loop"})
    add_request(form, site.url + "/loop")

    outcome = submit({"email": "ann@example.com"})

    assert len(site.requests) == 6
    assert "stopped after 5 redirects" in outcome.task("call").error


def test_max_redirects_0_keeps_the_redirect_as_the_answer(form, submit, site, allow_local_http):
    site.route("/start", 302, {"Location": "/elsewhere"})
    add_request(form, site.url + "/start", max_redirects=0)

    outcome = submit({"email": "ann@example.com"})

    assert [request["path"] for request in site.requests] == ["/start"]
    output = outcome.task("call").output
    assert output["status_code"] == 302
    assert output["headers"]["location"] == "/elsewhere"
    assert output["redirects"] == []


@pytest.mark.parametrize(
    ("status", "method", "then"),
    [
        (303, "POST", "GET"),
        (303, "PUT", "GET"),
        (302, "POST", "GET"),
        (301, "POST", "GET"),
        (307, "POST", "POST"),
        (308, "POST", "POST"),
        (302, "PUT", "PUT"),
        (308, "PATCH", "PATCH"),
    ],
)
def test_redirect_method_rules(form, submit, site, allow_local_http, status, method, then):
    site.route("/start", status, {"Location": "/next"})
    add_request(form, site.url + "/start", method=method, body='{"a": 1}', headers={"Content-Type": "application/json"})

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    first, second = site.requests
    assert (first["method"], first["body"]) == (method, b'{"a": 1}')
    assert second["method"] == then
    if then == "GET":
        assert second["body"] == b""
        assert "Content-Type" not in second["headers"] and "Content-Length" not in second["headers"]
    else:
        assert second["body"] == b'{"a": 1}'
        assert second["headers"]["Content-Type"] == "application/json"


# Idempotency-Key and signature ------------------------------------------------------------


def test_the_idempotency_key_is_the_task_id(form, submit, site, allow_local_http):
    add_request(form, site.url + "/hook", method="POST", body="x")

    outcome = submit({"email": "ann@example.com"})

    assert site.requests[0]["headers"]["Idempotency-Key"] == str(outcome.task("call").pk)


def test_a_second_attempt_of_the_same_task_sends_the_same_idempotency_key(form, submit, site, allow_local_http):
    node = add_request(form, site.url + "/hook", method="POST", body="x")
    outcome = submit({"email": "ann@example.com"})
    task = outcome.task("call")

    # A retry executes the same task again.
    ctx = NodeContext(
        run=outcome.run,
        task=task,
        record=outcome.record,
        node={"id": node.pk, "type": "http_request", "config": node.config},
    )
    HttpRequest().execute(ctx)

    first, second = site.requests
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"] == str(task.pk)


def test_the_idempotency_key_is_kept_across_redirects_and_differs_between_tasks(form, submit, site, allow_local_http):
    site.route("/start", 307, {"Location": "/next"})
    add_request(form, site.url + "/start", method="POST", body="x")

    first_run = submit({"email": "ann@example.com"})
    second_run = submit({"email": "bob@example.com"})

    keys = [request["headers"]["Idempotency-Key"] for request in site.requests]
    assert keys == [str(first_run.task("call").pk)] * 2 + [str(second_run.task("call").pk)] * 2
    assert keys[0] != keys[2]


def test_a_configured_idempotency_key_wins(form, submit, site, allow_local_http):
    add_request(form, site.url, headers={"idempotency-key": "booking-{{ record.email }}"})

    submit({"email": "ann@example.com"})

    assert site.requests[0]["headers"]["idempotency-key"] == "booking-ann@example.com"


# X-Signature, the older body-only scheme kept for existing receivers (Standard Webhooks: test_http_request_signing.py)


def legacy_signature(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_the_signature_verifies_with_the_secret_over_the_exact_body(
    form, submit, site, allow_local_http, signing_secret
):
    add_request(
        form,
        site.url + "/hook",
        method="POST",
        body='{"email": "{{ record.email }}", "é": 1}',
        headers={"X-Signature": "forged"},
    )

    submit({"email": "ann@example.com"})

    [received] = site.requests
    expected = hmac.new(signing_secret.encode(), received["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received["headers"]["X-Signature"], f"sha256={expected}")
    assert json.loads(received["body"]) == {"email": "ann@example.com", "é": 1}


def test_a_waiting_request_signs_its_default_json_body(form, submit, site, allow_local_http, signing_secret):
    add_node(
        form,
        "http_request",
        name="call",
        config={"method": "POST", "url": site.url + "/start", "wait_for_callback": True},
    )

    outcome = submit({"email": "ann@example.com"})

    [received] = site.requests
    assert json.loads(received["body"])["taskId"] == str(outcome.task("call").pk)
    expected = "sha256=" + hmac.new(signing_secret.encode(), received["body"], hashlib.sha256).hexdigest()
    assert received["headers"]["X-Signature"] == expected


def test_a_body_less_request_signs_the_empty_body(form, submit, site, allow_local_http, signing_secret):
    add_request(form, site.url)

    submit({"email": "ann@example.com"})

    expected = "sha256=" + hmac.new(signing_secret.encode(), b"", hashlib.sha256).hexdigest()
    assert site.requests[0]["headers"]["X-Signature"] == expected


def test_a_redirect_that_drops_the_body_re_signs_the_request(form, submit, site, allow_local_http, signing_secret):
    site.route("/start", 303, {"Location": "/next"})
    add_request(form, site.url + "/start", method="POST", body="payload")

    submit({"email": "ann@example.com"})

    first, second = site.requests
    assert first["headers"]["X-Signature"] == legacy_signature(signing_secret, b"payload")
    assert second["headers"]["X-Signature"] == legacy_signature(signing_secret, b"")


@pytest.mark.parametrize("secret", ["", None])
def test_no_signature_without_a_secret(form, submit, site, allow_local_http, settings, secret):
    if secret is None:
        if hasattr(settings, "EVENTS_HTTP_SIGNING_SECRET"):
            del settings.EVENTS_HTTP_SIGNING_SECRET
    else:
        settings.EVENTS_HTTP_SIGNING_SECRET = secret
    add_request(form, site.url, method="POST", body="x")

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").status == RunTask.Status.COMPLETE
    assert "X-Signature" not in site.requests[0]["headers"]


# Size cap and bounded reads ---------------------------------------------------------------


def test_a_declared_content_length_over_the_cap_is_refused_without_reading(form, submit, raw_server, allow_local_http):
    raw_server.answer = lambda conn, stop: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\nContent-Type: text/plain\r\n\r\nxx"
    )
    add_request(form, raw_server.url, timeout_seconds=2)

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "larger than 1048576 bytes" in task.error


def test_a_server_that_lies_about_a_small_content_length_gets_only_that_length(
    form, submit, raw_server, allow_local_http
):
    raw_server.answer = lambda conn, stop: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n" + b"y" * 2_000_000
    )
    add_request(form, raw_server.url, timeout_seconds=2)

    outcome = submit({"email": "ann@example.com"})

    assert outcome.task("call").output["body"] == "yyyyy"


@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_an_endless_answer_is_cut_at_the_cap(form, submit, raw_server, allow_local_http, framing):
    def endless(conn, stop):
        header = b"Transfer-Encoding: chunked\r\n" if framing == "chunked" else b"Connection: close\r\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + header + b"Content-Type: text/plain\r\n\r\n")
        piece = b"z" * 65536
        chunk = b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            conn.sendall(chunk)

    raw_server.answer = endless
    add_request(form, raw_server.url, timeout_seconds=5)

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "larger than 1048576 bytes" in task.error


@pytest.mark.slow
def test_a_trickling_answer_stops_at_the_read_timeout(form, submit, raw_server, allow_local_http):
    def trickle(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n")
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            conn.sendall(b"a")
            time.sleep(0.05)

    raw_server.answer = trickle
    add_request(form, raw_server.url, timeout_seconds=0.5)

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "Timeout" in task.error


# Config -----------------------------------------------------------------------------------


def test_config_accepts_connect_timeout_and_max_redirects():
    config = HttpRequest.clean_config(
        {"method": "GET", "url": "https://example.com", "connect_timeout_seconds": "2.5", "max_redirects": "0"}
    )

    assert config["connect_timeout_seconds"] == 2.5
    assert config["max_redirects"] == 0


def test_config_leaves_connect_timeout_and_max_redirects_to_their_defaults():
    config = HttpRequest.clean_config({"method": "GET", "url": "https://example.com"})

    assert "connect_timeout_seconds" not in config and "max_redirects" not in config


@pytest.mark.parametrize(
    ("key", "value"),
    [("connect_timeout_seconds", 0), ("connect_timeout_seconds", 61), ("max_redirects", -1), ("max_redirects", 21)],
)
def test_config_refuses_out_of_bounds_connect_timeout_and_redirects(key, value):
    with pytest.raises(ValidationError) as excinfo:
        HttpRequest.clean_config({"method": "GET", "url": "https://example.com", key: value})

    assert key in excinfo.value.message_dict
