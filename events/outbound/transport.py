"""The httpx transport and client every outbound request goes through. Imports httpx: load it only to call out."""

import math
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx
from django.conf import settings

from .errors import DestinationRefused, OutboundError, ResponseTooLarge
from .guard import check_destination, parse_target
from .signing import body_signature, new_message_id, signing_key, webhook_headers

MAX_RESPONSE_BYTES = 1024 * 1024
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# Credentials meant for one origin: dropped when a redirect leads to another one.
ORIGIN_BOUND_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")
DECODED_PIECE_BYTES = 64 * 1024  # the most a decoder produces at a time
MESSAGE_ID = "message_id"  # the request extension naming the message a request belongs to
DEADLINE = "events_deadline"  # the request extension: time.monotonic() by which its whole answer must be in


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that checks, pins, signs and caps each request sent through it.

    For each request (a redirect is a request of its own):

    - the URL's host is resolved and checked (``guard.check_destination``) before any
      connection; the connection goes to a checked address (the next one only when a
      connection could not be made), with the URL's own name in ``Host`` (a ``Host``
      header of the request is replaced) and, for https, in TLS SNI and the certificate check;
    - ``Accept-Encoding: identity`` replaces whatever the request asked for, so the size
      cap counts the bytes as they travel;
    - with a signing secret, the ``webhook-id`` (the request extension ``message_id``,
      else a new id), ``webhook-timestamp`` and ``webhook-signature`` headers of the
      Standard Webhooks scheme (see ``signing``), and the older ``X-Signature``; these
      replace headers of the same names;
    - the answer's bytes are capped at ``max_bytes`` (a larger Content-Length is refused
      before reading), and its whole body must arrive within the request's read timeout
      (and by the request extension ``DEADLINE``, when given).

    Refusals raise DestinationRefused and the caps ResponseTooLarge or OutboundError;
    what the network does raises httpx's own errors.
    """

    def __init__(self, *, signing_secret="", max_bytes=MAX_RESPONSE_BYTES):
        self.signing_secret = signing_secret
        self.key = signing_key(signing_secret) if signing_secret else None
        self.max_bytes = max_bytes
        self.inner = httpx.HTTPTransport()  # what really connects; proxies are never used

    def handle_request(self, request):
        destination = check_destination(str(request.url))
        headers = httpx.Headers(request.headers)
        headers["Host"] = request.url.netloc.decode("ascii")  # the name that was checked, not a configured one
        headers["Accept-Encoding"] = "identity"
        if self.key is not None:
            body = request.read()
            message_id = request.extensions.get(MESSAGE_ID) or new_message_id()
            headers.update(webhook_headers(key=self.key, message_id=message_id, body=body))
            headers["X-Signature"] = body_signature(secret=self.signing_secret, body=body)
        extensions = {name: value for name, value in request.extensions.items() if name not in (MESSAGE_ID, DEADLINE)}
        if destination.scheme == "https":
            extensions["sni_hostname"] = destination.host
        failure = None
        for address in destination.addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=str(address)),
                headers=headers,
                stream=request.stream,
                extensions=extensions,
            )
            try:
                response = self.inner.handle_request(pinned)
            except httpx.ConnectError as exc:  # nothing was sent: the next address may answer
                failure = exc
                continue
            return self._capped(
                response,
                read_timeout=(extensions.get("timeout") or {}).get("read"),
                deadline=request.extensions.get(DEADLINE),
            )
        raise failure

    def _capped(self, response, *, read_timeout, deadline=None):
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response.close()
            raise ResponseTooLarge(f"The response is larger than {self.max_bytes} bytes (Content-Length {declared}).")
        if read_timeout is not None:
            deadline = min(deadline or math.inf, time.monotonic() + read_timeout)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            extensions=response.extensions,
            stream=_CappedStream(response.stream, max_bytes=self.max_bytes, deadline=deadline),
        )

    def close(self):
        self.inner.close()


class _CappedStream(httpx.SyncByteStream):
    """A response body that stops past ``max_bytes`` or past the deadline, whatever the headers say."""

    def __init__(self, stream, *, max_bytes, deadline):
        self.stream, self.max_bytes, self.deadline = stream, max_bytes, deadline

    def __iter__(self):
        size = 0
        for chunk in self.stream:
            size += len(chunk)
            if size > self.max_bytes:
                raise ResponseTooLarge(f"The response is larger than {self.max_bytes} bytes.")
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise OutboundError("The response took longer than the read timeout to arrive (ReadTimeout).")
            yield chunk

    def close(self):
        self.stream.close()


def read_body(response, *, max_bytes=MAX_RESPONSE_BYTES):
    """The body, decoded (gzip, deflate) a piece at a time: more than ``max_bytes`` of it raises ResponseTooLarge.

    httpx's own decoding inflates a whole network chunk at once (64 KiB of gzip can be
    tens of MB), so the raw bytes are read and inflated here, never more than
    DECODED_PIECE_BYTES past the cap. Other encodings are kept as they came, as httpx does.
    """
    codings = [c.strip().lower() for c in response.headers.get("Content-Encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    pieces = response.iter_raw()
    if all(coding in _INFLATE_WBITS for coding in codings):
        for coding in reversed(codings):  # listed in the order they were applied
            pieces = _inflated(pieces, coding)
    chunks, size = [], 0
    for piece in pieces:
        size += len(piece)
        if size > max_bytes:
            raise ResponseTooLarge(f"The response is larger than {max_bytes} bytes (decoded).")
        chunks.append(piece)
    return b"".join(chunks)


# zlib window bits: gzip wrapper; deflate is meant to be zlib-wrapped but is often raw (tried second).
_INFLATE_WBITS = {
    "gzip": (zlib.MAX_WBITS | 16,),
    "x-gzip": (zlib.MAX_WBITS | 16,),
    "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS),
}


def _inflated(pieces, coding):
    """Inflate an iterable of byte strings, yielding at most DECODED_PIECE_BYTES at a time."""
    candidates = list(_INFLATE_WBITS[coding])
    inflater, started = zlib.decompressobj(candidates.pop(0)), False
    try:
        for data in pieces:
            while data:
                try:
                    piece = inflater.decompress(data, DECODED_PIECE_BYTES)
                except zlib.error:
                    if started or not candidates:
                        raise
                    inflater = zlib.decompressobj(candidates.pop(0))  # raw deflate after all
                    continue
                started = True
                if piece:
                    yield piece
                data = inflater.unconsumed_tail
        tail = inflater.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        raise httpx.DecodingError(f"the {coding} body cannot be decoded: {exc}") from None


@dataclass
class Answer:
    """The final answer to an outbound request, its body read (and decoded) within the cap."""

    status_code: int
    headers: dict  # lower-case names; repeated headers joined with ", "
    body: bytes
    encoding: str  # the charset the answer declares, else utf-8
    url: str  # the URL that gave this answer
    redirects: list = field(default_factory=list)  # one {"url", "status_code", "location"} per redirect followed


def request(
    method,
    url,
    *,
    headers=None,
    content=b"",
    message_id=None,
    timeout=10.0,
    connect_timeout=5.0,
    max_redirects=5,
    total_timeout=None,
    log=None,
):
    """Send one request through a GuardedTransport, follow its redirects, and return its Answer.

    - ``headers``: sent as given, after ``Idempotency-Key: <message_id>`` (a given
      header of that name wins); ``message_id`` is also the signed ``webhook-id``;
    - ``timeout``: the read timeout, for any single read and for each whole answer;
      ``connect_timeout``: for each connection;
    - ``total_timeout``: when given, the seconds the whole request may take, redirects
      included: each request's timeouts shrink to what is left, none goes out once it is
      spent, and an answer still arriving then is cut off. (Waits are bounded, not the
      sum: a slow connection, then a slow first byte, then the last bytes may each take
      up to what was left, so a request ends within about three times it in the worst case.)
    - ``max_redirects``: ``0`` keeps a redirect as the answer; a longer chain raises.
      303, and 301/302 after a POST, go on as a GET without a body (as browsers do);
      307 and 308 keep the method and the body. ``Authorization``,
      ``Proxy-Authorization`` and ``Cookie`` are dropped when a redirect leads to
      another scheme, host or port;
    - ``log``: called with a line per request sent and per redirect.

    Signs with ``settings.EVENTS_HTTP_SIGNING_SECRET`` when set. Raises OutboundError
    (DestinationRefused for a URL that may not be called), never an httpx error.
    """
    log = log or (lambda line: None)
    sent = httpx.Headers({"Idempotency-Key": message_id} if message_id else {})
    sent.update(headers or {})
    try:
        transport = GuardedTransport(signing_secret=getattr(settings, "EVENTS_HTTP_SIGNING_SECRET", "") or "")
    except ValueError as exc:
        raise OutboundError(f"EVENTS_HTTP_SIGNING_SECRET cannot be used: {exc}.") from None
    redirects = []
    deadline = None if total_timeout is None else time.monotonic() + total_timeout
    # trust_env=False: a proxy from the environment would connect instead of us, to an unchecked address.
    with httpx.Client(
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        follow_redirects=False,
        trust_env=False,
    ) as client:
        while True:
            # What is left of total_timeout: all of it for the first request (it starts now).
            left = None if deadline is None else total_timeout if not redirects else deadline - time.monotonic()
            timeouts = _timeouts(timeout, connect_timeout, left=left, total=total_timeout)
            log(f"{method} {url}")
            response, body = _exchange(
                client,
                method=method,
                url=url,
                headers=sent,
                content=content,
                message_id=message_id,
                max_bytes=transport.max_bytes,
                timeout=timeouts,
                deadline=deadline,
            )
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location or max_redirects == 0:
                break
            if len(redirects) >= max_redirects:
                raise OutboundError(f"{method} {url}: stopped after {max_redirects} redirects.")
            next_url = urljoin(url, location.strip())
            redirects.append({"url": url, "status_code": response.status_code, "location": next_url})
            log(f"answered {response.status_code}, redirected to {next_url}")
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, content = "GET", b""
                for name in ("Content-Type", "Content-Length", "Transfer-Encoding"):
                    sent.pop(name, None)
            if parse_target(next_url).origin != parse_target(url).origin:
                for name in ORIGIN_BOUND_HEADERS:
                    sent.pop(name, None)
            url = next_url
    return Answer(
        status_code=response.status_code,
        headers=dict(response.headers),
        body=body,
        encoding=response.encoding or "utf-8",
        url=url,
        redirects=redirects,
    )


def _timeouts(read, connect, *, left, total):
    """The httpx timeouts of the next request: as configured, shrunk to the ``left`` seconds of ``total``."""
    if left is None:
        return httpx.Timeout(read, connect=connect)
    if left <= 0:
        raise OutboundError(f"Gave up: the request's {total:g} s were spent before it could be sent (redirects).")
    return httpx.Timeout(min(read, left), connect=min(connect, left))


def _exchange(client, *, method, url, headers, content, message_id, max_bytes, timeout, deadline=None):
    """Send one request; return the response and its body, read within the caps (and by ``deadline``)."""
    parse_target(url)  # a URL that is not http(s) is refused before httpx reads it
    extensions = {MESSAGE_ID: message_id} if message_id else {}
    if deadline is not None:
        extensions[DEADLINE] = deadline
    try:
        request = client.build_request(
            method, url, headers=headers, content=content or None, timeout=timeout, extensions=extensions
        )
    except httpx.InvalidURL:
        check_destination(url)  # a refusal says more than "invalid" (0177.0.0.1 is loopback to the resolver)
        raise DestinationRefused(f"“{url}” is not a valid URL.") from None
    try:
        response = client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise OutboundError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from None
    try:
        return response, read_body(response, max_bytes=max_bytes)
    except httpx.HTTPError as exc:
        raise OutboundError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from None
    finally:
        response.close()
