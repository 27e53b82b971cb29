import hashlib
import hmac
import ipaddress
import json
import socket
import time
from urllib.parse import urljoin, urlsplit, urlunsplit

from django import forms
from django.conf import settings

from ..templating import TemplateCharField, TemplateTextField
from .base import ConfigForm, NodeError, NodeType, Waiting
from .registry import register

MAX_RESPONSE_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_REDIRECTS = 5
MAX_REDIRECTS_LIMIT = 20
DEFAULT_CALLBACK_TIMEOUT_SECONDS = 3600
MAX_CALLBACK_TIMEOUT_SECONDS = 30 * 24 * 3600
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# Credentials meant for one origin: dropped when a redirect leads to another one.
ORIGIN_BOUND_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")
# Cloud instance metadata services, refused even where a check on the address class would miss them.
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


class HttpRequestConfig(ConfigForm):
    method = forms.ChoiceField(label="Method", choices=[(m, m) for m in METHODS], initial="POST")
    url = TemplateCharField(label="URL", max_length=2000, help_text="http:// or https://; templates allowed.")
    headers = forms.JSONField(label="Headers", required=False, help_text='A JSON object: {"X-Token": "..."}.')
    body = TemplateTextField(label="Body", required=False, help_text="Sent as is; templates allowed.")
    timeout_seconds = forms.FloatField(
        label="Read timeout (seconds)", min_value=0.1, max_value=120, initial=DEFAULT_TIMEOUT_SECONDS, required=False,
        help_text="The longest wait for the answer, per read and for the whole answer of each request.",
    )
    connect_timeout_seconds = forms.FloatField(
        label="Connect timeout (seconds)", min_value=0.1, max_value=60, required=False,
        help_text=f"The longest wait for a connection (default {DEFAULT_CONNECT_TIMEOUT_SECONDS:g}).",
    )
    max_redirects = forms.IntegerField(
        label="Redirects to follow", min_value=0, max_value=MAX_REDIRECTS_LIMIT, required=False,
        help_text=f"Default {DEFAULT_MAX_REDIRECTS}; 0 keeps a redirect as the answer.",
    )
    fail_on_status = forms.BooleanField(
        label="Fail on an error status", required=False, initial=True, help_text="Fail the step on a 4xx or 5xx answer."
    )
    wait_for_callback = forms.BooleanField(
        label="Wait for a callback",
        required=False,
        help_text="After the request, wait (status “awaiting”) until the external system calls back.",
    )
    callback_timeout_seconds = forms.IntegerField(
        label="Callback deadline (seconds)",
        required=False,
        min_value=1,
        max_value=MAX_CALLBACK_TIMEOUT_SECONDS,
        help_text=f"With a callback: fail as timed out if none arrives in time (default {DEFAULT_CALLBACK_TIMEOUT_SECONDS}).",
    )

    def clean_url(self):
        url = self.cleaned_data["url"]
        if "{" not in url and urlsplit(url).scheme not in ("http", "https"):
            raise forms.ValidationError("Use an http:// or https:// URL.")
        return url

    def clean_headers(self):
        headers = self.cleaned_data.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise forms.ValidationError('Give the headers as a JSON object of strings: {"Name": "value"}.')
        return headers

    def to_config(self):
        config = super().to_config()
        # Left out of a config document it defaults to true; a form always sends it.
        config["fail_on_status"] = bool(self.cleaned_data.get("fail_on_status")) if "fail_on_status" in self.data else True
        config.setdefault("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
        if config.get("wait_for_callback"):
            config.setdefault("callback_timeout_seconds", DEFAULT_CALLBACK_TIMEOUT_SECONDS)
        else:
            config.pop("wait_for_callback", None)
            config.pop("callback_timeout_seconds", None)
        return config


class Destination:
    """A checked URL: where it points, and the addresses a request to it may connect to."""

    def __init__(self, url, *, scheme, host, port, userinfo, addresses):
        self.url = url  # as given (after templating), for messages, logs and the output
        self.scheme = scheme
        self.host = host  # ASCII (IDNA) host name or IP literal, without brackets
        self.port = port  # None when the URL gives none
        self.userinfo = userinfo
        self.addresses = addresses  # the resolved addresses that passed the check, in resolver order

    @property
    def origin(self):
        return (self.scheme, self.host, self.port or (443 if self.scheme == "https" else 80))

    @property
    def host_header(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def pinned_url(self, address):
        """The URL with its host replaced by ``address``: the connection goes there and nowhere else."""
        parts = urlsplit(self.url)
        netloc = f"[{address}]" if address.version == 6 else str(address)
        if self.port is not None:
            netloc = f"{netloc}:{self.port}"
        if self.userinfo:
            netloc = f"{self.userinfo}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _normalised_host(host):
    host = host.strip().lower()
    if host.startswith("[") and "]" in host:  # [v6] or [v6]:port
        host = host[1:host.index("]")]
    elif host.count(":") == 1:  # name:port or v4:port
        host = host.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))  # one spelling per standard IP literal
    except ValueError:
        return host


def is_allowed_host(host):
    """Is ``host`` listed in EVENTS_HTTP_ALLOWED_HOSTS?

    Entries are exact host names or IP literals (``[::1]`` or ``::1``), compared without
    case; no wildcards. Ports do not matter: an entry allows every port of its host, and a
    port written in an entry is ignored.
    """
    allowed = {_normalised_host(entry) for entry in getattr(settings, "EVENTS_HTTP_ALLOWED_HOSTS", []) or []}
    return _normalised_host(host) in allowed


def is_forbidden_address(address):
    """Loopback, private, link-local, unspecified, multicast, reserved, shared or a metadata service?

    IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, 6to4, NAT64)
    are judged by the IPv4 address inside.
    """
    if address.version == 6:
        if address.scope_id:
            return True
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and is_forbidden_address(embedded):
            return True
    return (
        address in METADATA_ADDRESSES
        or not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def check_destination(url):
    """Resolve the host of ``url`` and return a Destination whose addresses may be connected to.

    Raises NodeError, before any connection, when the URL is not http(s) or when any address
    the host resolves to is forbidden (see is_forbidden_address) and the host is not in
    EVENTS_HTTP_ALLOWED_HOSTS. Odd spellings of an IP (``2130706433``, ``0177.0.0.1``,
    ``0x7f.1``) resolve like any name and are judged by the address they resolve to.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise NodeError(f"“{url}” is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeError(f"“{url}” is not an http:// or https:// URL.")
    try:
        host = parts.hostname.encode("idna").decode("ascii") if not parts.hostname.isascii() else parts.hostname
    except UnicodeError:
        raise NodeError(f"“{url}” has a host name that cannot be encoded.") from None
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise NodeError(f"Cannot resolve “{host}”: {exc}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise NodeError(f"Cannot resolve “{host}”: no addresses.")
    if not is_allowed_host(host):
        for address in addresses:
            if is_forbidden_address(address):
                raise NodeError(
                    f"Refused to connect to {host} ({address}): private, loopback, link-local and metadata "
                    "addresses are blocked. Add the host to EVENTS_HTTP_ALLOWED_HOSTS to allow it."
                )
    return Destination(url, scheme=parts.scheme, host=host, port=port, userinfo=userinfo, addresses=addresses)


def signature(body, secret):
    """``sha256=<hex>``: HMAC-SHA256 of the exact body bytes, keyed with the UTF-8 bytes of ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


@register
class HttpRequest(NodeType):
    """One outbound HTTP request; the response goes into the task output.

    Config: ``method``, ``url``, ``headers`` (JSON object), ``body``, ``fail_on_status``
    (default true), and:

    - ``timeout_seconds`` (default 10): the read timeout, the longest wait for the answer,
      both for any single read and for the whole answer of each request;
    - ``connect_timeout_seconds`` (default 5): the longest wait for a connection;
    - ``max_redirects`` (default 5, at most 20): redirects followed. ``0`` keeps a redirect as
      the answer; a longer chain fails the step. 303, and 301/302 after a POST, continue as a
      GET without a body (as browsers do); 307 and 308 keep the method and the body.
      ``Authorization``, ``Proxy-Authorization`` and ``Cookie`` are dropped when a redirect
      leads to another scheme, host or port.

    URL, header values and body are templates.

    Destinations: before connecting, the host is resolved and the request is refused when
    any of its addresses is loopback, private, link-local, unspecified, multicast,
    reserved, shared (100.64/10) or a cloud metadata service (169.254.169.254,
    fd00:ec2::254; IPv4-mapped IPv6 forms such as ``::ffff:127.0.0.1`` count as the IPv4
    address), unless ``settings.EVENTS_HTTP_ALLOWED_HOSTS`` names the host exactly (a host
    name or an IP literal, as written in the URL; ports do not matter, see is_allowed_host).
    The connection then goes to the very address that was checked (the URL's host is
    replaced by it; the ``Host`` header and, for https, TLS SNI and certificate checks use
    the real name), so a second DNS answer cannot redirect it. Every redirect is checked
    the same way before its connection. Proxy environment variables are ignored.

    Headers sent with every request (a configured header of the same name wins, except
    for the signature):

    - ``Idempotency-Key``: the task id, the same for every attempt and redirect of the
      same task, so a receiver can recognise a repeat;
    - ``X-Signature: sha256=<hex>`` when ``settings.EVENTS_HTTP_SIGNING_SECRET`` is set:
      HMAC-SHA256, keyed with the UTF-8 bytes of the secret, over the exact bytes of the
      request body as sent (an empty body signs the empty string). Nothing else (no
      URL, headers or time) is signed; receivers compare with ``hmac.compare_digest``.

    The answer is read up to 1 MiB (whatever its Content-Length says); a larger one
    fails the step.

    Output: ``{"status_code", "headers", "body", "json", "url", "redirects"}``: ``json``
    when the answer parses as JSON that can be stored (no NaN, Infinity, NUL characters or
    unpaired surrogates: such an answer stays text only, and a log line says why; NUL
    characters in ``body`` become U+FFFD), ``url`` the URL that gave the final answer,
    ``redirects`` one ``{"url", "status_code", "location"}`` per redirect followed.

    With ``wait_for_callback`` the task moves to *awaiting* before the request goes
    out, and its sequence waits until a callback arrives or ``callback_timeout_seconds``
    (default 3600) pass. Templates then also see ``callback.task_id``, ``callback.url``
    and ``callback.token``; an empty body becomes the JSON object
    ``{"taskId", "callbackUrl", "callbackToken"}``.
    """

    key = "http_request"
    label = "HTTP request"
    config_form = HttpRequestConfig

    @classmethod
    def describe(cls, config):
        described = f"{config.get('method', 'POST')} {config.get('url')}"
        if config.get("wait_for_callback"):
            described += f", then waits for a callback (up to {config.get('callback_timeout_seconds')} s)"
        return described

    def execute(self, ctx):
        import httpx  # here, not at import: a web worker that never calls out does not load it

        method = ctx.config.get("method", "POST")
        waits = bool(ctx.config.get("wait_for_callback"))
        extra = {}
        if waits:
            # Awaiting before the request goes out: an instant answer finds the task ready.
            callback = ctx.await_callback(
                timeout_seconds=int(ctx.config.get("callback_timeout_seconds") or DEFAULT_CALLBACK_TIMEOUT_SECONDS)
            )
            extra["callback"] = callback
            ctx.log(f"waiting for a callback until {callback['deadline']}")
        url = ctx.render(ctx.config["url"], extra).strip()
        destination = check_destination(url)
        headers = httpx.Headers({"Idempotency-Key": str(ctx.task.pk)})
        headers.update(ctx.render(ctx.config.get("headers") or {}, extra))
        body = ctx.render(ctx.config.get("body") or "", extra)
        if waits and not body:
            body = json.dumps(
                {"taskId": extra["callback"]["task_id"], "callbackUrl": extra["callback"]["url"],
                 "callbackToken": extra["callback"]["token"]}
            )
            headers.setdefault("Content-Type", "application/json")
        read_timeout = float(ctx.config.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS)
        connect_timeout = float(ctx.config.get("connect_timeout_seconds") or DEFAULT_CONNECT_TIMEOUT_SECONDS)
        max_redirects = ctx.config.get("max_redirects")
        max_redirects = DEFAULT_MAX_REDIRECTS if max_redirects in (None, "") else int(max_redirects)
        content = body.encode() if body else b""
        redirects = []
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        # trust_env=False: a proxy from the environment would connect instead of us, to an unchecked address.
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            while True:
                ctx.log(f"{method} {destination.url}")
                response, data = _exchange(
                    client, method=method, destination=destination, headers=headers, content=content,
                    read_timeout=read_timeout,
                )
                location = response.headers.get("Location")
                if response.status_code not in REDIRECT_STATUSES or not location or max_redirects == 0:
                    break
                if len(redirects) >= max_redirects:
                    raise NodeError(f"{method} {destination.url}: stopped after {max_redirects} redirects.")
                next_url = urljoin(destination.url, location.strip())
                redirects.append({"url": destination.url, "status_code": response.status_code, "location": next_url})
                ctx.log(f"answered {response.status_code}, redirected to {next_url}")
                next_destination = check_destination(next_url)
                if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                    method, content = "GET", b""
                    for name in ("Content-Type", "Content-Length", "Transfer-Encoding"):
                        headers.pop(name, None)
                if next_destination.origin != destination.origin:
                    for name in ORIGIN_BOUND_HEADERS:
                        headers.pop(name, None)
                destination = next_destination
        text = data.decode(response.encoding or "utf-8", errors="replace")
        ctx.log(f"answered {response.status_code}")
        if "\x00" in text:
            text = text.replace("\x00", "\ufffd")
            ctx.log("the answer holds NUL characters, which cannot be stored: each is kept as U+FFFD in output.body")
        output = {
            "status_code": response.status_code,
            "headers": dict(response.headers),
            "body": text,
            "url": destination.url,
            "redirects": redirects,
        }
        output.update(_storable_json(ctx, text))
        if ctx.config.get("fail_on_status", True) and response.status_code >= 400:
            raise NodeError(f"{method} {destination.url} answered {response.status_code}: {text[:200]}")
        if waits:
            return Waiting(output=output)
        return output


def _exchange(client, *, method, destination, headers, content, read_timeout):
    """Send one request to a checked destination; return the response and its body, read up to the cap.

    Tries the checked addresses in resolver order, moving on only when a connection could
    not be made (nothing was sent yet).
    """
    import httpx  # here, not at import: a web worker that never calls out does not load it

    headers = httpx.Headers(headers)
    headers["Host"] = destination.host_header
    secret = getattr(settings, "EVENTS_HTTP_SIGNING_SECRET", "")
    if secret:
        headers["X-Signature"] = signature(content, secret)
    extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
    failure = None
    for address in destination.addresses:
        request = client.build_request(
            method, destination.pinned_url(address), headers=headers, content=content or None, extensions=extensions
        )
        try:
            response = client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
            continue
        except httpx.HTTPError as exc:
            raise NodeError(f"{method} {destination.url} failed: {exc.__class__.__name__}: {exc}") from None
        try:
            return response, _read_capped(response, deadline=time.monotonic() + read_timeout)
        except httpx.HTTPError as exc:
            raise NodeError(f"{method} {destination.url} failed: {exc.__class__.__name__}: {exc}") from None
        finally:
            response.close()
    raise NodeError(f"{method} {destination.url} failed: {failure.__class__.__name__}: {failure}")


def _read_capped(response, *, deadline):
    """The body, refusing more than MAX_RESPONSE_BYTES and a trickle past the deadline, whatever the headers say."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise NodeError(f"The response is larger than {MAX_RESPONSE_BYTES} bytes (Content-Length {declared}).")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise NodeError(f"The response is larger than {MAX_RESPONSE_BYTES} bytes.")
        if time.monotonic() > deadline:
            raise NodeError("The response took longer than the read timeout to arrive (ReadTimeout).")
        chunks.append(chunk)
    return b"".join(chunks)


def _storable_json(ctx, text):
    """``{"json": the answer parsed}`` when it is JSON that every database can store, else ``{}``.

    JSON holding NaN, Infinity (or 1e999, which reads as Infinity), NUL characters or unpaired
    surrogates would fail to save and leave the step running until its lease expired: such an
    answer is kept as text only, in ``body``, and a log line says why.
    """
    from ..models import RunTask

    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return {}  # not JSON: the body is the answer
    problem = RunTask.storage_problem(parsed, "json")
    if problem:
        ctx.log(f"the answer is kept as text only (output.body), not as output.json: {problem}")
        return {}
    return {"json": parsed}
