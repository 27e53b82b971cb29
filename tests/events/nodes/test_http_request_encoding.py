"""http_request asks for uncompressed answers; a server that compresses anyway cannot make it hold more than the cap."""

import gzip
import json
import tracemalloc
import zlib

import pytest

from events.models import RunTask
from tests.factories import add_node
from tests.support.servers import QuietHandler, recording_server

CAP = 1024 * 1024


class Compressing:
    """A local server that answers every request with ``body`` as ``Content-Encoding: encoding``, whatever was asked."""

    def __init__(self):
        self.requests = []
        self.body, self.encoding = b"", "gzip"


@pytest.fixture
def compressing():
    server = Compressing()

    class Handler(QuietHandler):
        def _handle(self):
            server.requests.append(self.received(self.read_body()))
            self.answer(200, server.body, {"Content-Type": "application/json", "Content-Encoding": server.encoding})

        do_GET = do_POST = _handle

    with recording_server(Handler) as running:
        server.url = running.url
        yield server


def gzip_of_zeros(size):
    """A gzip body that inflates to ``size`` zero bytes, built without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    piece = bytes(1024 * 1024)
    parts = [compressor.compress(piece) for _ in range(size // len(piece))]
    return b"".join(parts) + compressor.flush()


@pytest.fixture(scope="module")
def bomb():
    body = gzip_of_zeros(64 * 1024 * 1024)
    assert len(body) < 100 * 1024  # 64 MiB of zeros in well under 100 KiB
    return body


def add_call(form, url, **config):
    return add_node(form, "http_request", name="call", config={"method": "GET", "url": url, **config})


def test_a_gzip_bomb_cannot_make_the_step_hold_more_than_the_cap(form, submit, compressing, allow_local_http, bomb):
    compressing.body = bomb
    add_call(form, compressing.url + "/bomb")

    tracemalloc.start()
    try:
        outcome = submit({"email": "ann@example.com"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert f"larger than {CAP} bytes" in task.error
    # Inflating a network chunk whole would take 64 MiB; a piece at a time stays near the cap.
    assert peak < 8 * CAP
    assert compressing.requests[0]["headers"]["Accept-Encoding"] == "identity"


def test_the_request_asks_for_identity_even_when_a_header_asks_otherwise(form, submit, http_server, allow_local_http):
    add_call(form, http_server.url, headers={"Accept-Encoding": "gzip, br"})

    submit({"email": "ann@example.com"})

    sent = {name.lower(): value for name, value in http_server.requests[0]["headers"].items()}
    assert sent["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),
    ],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw"],
)
def test_a_compressed_answer_within_the_cap_is_decoded(form, submit, compressing, allow_local_http, encoding, compress):
    answer = {"ok": True, "padding": "x" * 200_000}
    compressing.body, compressing.encoding = compress(json.dumps(answer).encode()), encoding
    add_call(form, compressing.url)

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.COMPLETE, task.error
    assert task.output["json"] == answer


def test_a_compressed_answer_just_over_the_cap_once_decoded_fails(form, submit, compressing, allow_local_http):
    compressing.body = gzip.compress(b"y" * (CAP + 1))
    add_call(form, compressing.url)

    outcome = submit({"email": "ann@example.com"})

    assert f"larger than {CAP} bytes" in outcome.task("call").error


def test_a_compressed_answer_of_exactly_the_cap_is_kept(form, submit, compressing, allow_local_http):
    compressing.body, compressing.encoding = gzip.compress(b"y" * CAP), "gzip"
    add_call(form, compressing.url)

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.COMPLETE, task.error
    assert len(task.output["body"]) == CAP


def test_a_corrupt_compressed_answer_fails_the_step(form, submit, compressing, allow_local_http):
    compressing.body = gzip.compress(b'{"ok": true}')[:12] + b"not gzip at all"
    add_call(form, compressing.url)

    outcome = submit({"email": "ann@example.com"})

    task = outcome.task("call")
    assert task.status == RunTask.Status.FAILED
    assert "DecodingError" in task.error


def test_an_unknown_encoding_is_kept_as_it_came(form, submit, compressing, allow_local_http):
    compressing.body, compressing.encoding = b"opaque", "br"
    add_call(form, compressing.url)

    outcome = submit({"email": "ann@example.com"})

    output = outcome.task("call").output
    assert output["body"] == "opaque"
    assert output["headers"]["content-encoding"] == "br"
