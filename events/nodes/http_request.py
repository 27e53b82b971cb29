import ipaddress
import json
import socket
from urllib.parse import urlsplit

import httpx
from django import forms
from django.conf import settings

from ..templating import TemplateCharField, TemplateTextField
from .base import ConfigForm, NodeError, NodeType, Waiting
from .registry import register

MAX_RESPONSE_BYTES = 1024 * 1024
DEFAULT_CALLBACK_TIMEOUT_SECONDS = 3600
MAX_CALLBACK_TIMEOUT_SECONDS = 30 * 24 * 3600
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpRequestConfig(ConfigForm):
    method = forms.ChoiceField(label="Method", choices=[(m, m) for m in METHODS], initial="POST")
    url = TemplateCharField(label="URL", max_length=2000, help_text="http:// or https://; templates allowed.")
    headers = forms.JSONField(label="Headers", required=False, help_text='A JSON object: {"X-Token": "..."}.')
    body = TemplateTextField(label="Body", required=False, help_text="Sent as is; templates allowed.")
    timeout_seconds = forms.FloatField(label="Timeout (seconds)", min_value=0.1, max_value=120, initial=10, required=False)
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
        config.setdefault("timeout_seconds", 10.0)
        if config.get("wait_for_callback"):
            config.setdefault("callback_timeout_seconds", DEFAULT_CALLBACK_TIMEOUT_SECONDS)
        else:
            config.pop("wait_for_callback", None)
            config.pop("callback_timeout_seconds", None)
        return config


def check_destination(url):
    """Refuse loopback, private, link-local and reserved addresses unless the host is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeError(f"“{url}” is not an http:// or https:// URL.")
    host = parts.hostname
    if host in settings.EVENTS_HTTP_ALLOWED_HOSTS:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NodeError(f"Cannot resolve “{host}”: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise NodeError(
                f"Refused to connect to {host} ({address}): private, loopback and link-local addresses "
                "are blocked. Add the host to EVENTS_HTTP_ALLOWED_HOSTS to allow it."
            )


@register
class HttpRequest(NodeType):
    """One outbound HTTP request; the response goes into the task output.

    Config: ``method``, ``url``, ``headers`` (JSON object), ``body``, ``timeout_seconds``
    (connect and read, default 10), ``fail_on_status`` (default true). URL, header values
    and body are templates. Redirects are not followed. Private and loopback addresses
    are refused unless the host is listed in ``EVENTS_HTTP_ALLOWED_HOSTS``.
    Output: ``{"status_code", "headers", "body", "json"}`` (``json`` when the answer parses).

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
        check_destination(url)
        headers = ctx.render(ctx.config.get("headers") or {}, extra)
        body = ctx.render(ctx.config.get("body") or "", extra)
        if waits and not body:
            body = json.dumps(
                {"taskId": extra["callback"]["task_id"], "callbackUrl": extra["callback"]["url"],
                 "callbackToken": extra["callback"]["token"]}
            )
            headers = {"Content-Type": "application/json", **headers}
        timeout = float(ctx.config.get("timeout_seconds", 10))
        ctx.log(f"{method} {url}")
        try:
            with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False) as client:
                with client.stream(method, url, headers=headers, content=body.encode() if body else None) as response:
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > MAX_RESPONSE_BYTES:
                            raise NodeError(f"The response is larger than {MAX_RESPONSE_BYTES} bytes.")
                        chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise NodeError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from None
        text = b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")
        ctx.log(f"answered {response.status_code}")
        output = {"status_code": response.status_code, "headers": dict(response.headers), "body": text}
        try:
            output["json"] = json.loads(text)
        except ValueError:
            pass
        if ctx.config.get("fail_on_status", True) and response.status_code >= 400:
            raise NodeError(f"{method} {url} answered {response.status_code}: {text[:200]}")
        if waits:
            return Waiting(output=output)
        return output
