import json
from urllib.parse import urlsplit

from django import forms

from .. import outbound
from ..storable import storage_problem
from ..templating import TemplateCharField, TemplateTextField
from .base import ConfigForm, JSONObjectField, NodeError, NodeType, Waiting
from .registry import register

DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_REDIRECTS = 5
MAX_REDIRECTS_LIMIT = 20
DEFAULT_CALLBACK_TIMEOUT_SECONDS = 3600
MAX_CALLBACK_TIMEOUT_SECONDS = 30 * 24 * 3600
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpRequestConfig(ConfigForm):
    method = forms.ChoiceField(label="Method", choices=[(m, m) for m in METHODS], initial="POST")
    url = TemplateCharField(label="URL", max_length=2000, help_text="http:// or https://; templates allowed.")
    headers = JSONObjectField(label="Headers", required=False, help_text='A JSON object: {"X-Token": "..."}.')
    body = TemplateTextField(label="Body", required=False, help_text="Sent as is; templates allowed.")
    timeout_seconds = forms.FloatField(
        label="Read timeout (seconds)",
        min_value=0.1,
        max_value=120,
        initial=DEFAULT_TIMEOUT_SECONDS,
        required=False,
        help_text="The longest wait for the answer, per read and for the whole answer of each request. "
        "In the submit request (not in Background) it is cut to EVENTS_INLINE_STEP_MAX_SECONDS.",
    )
    connect_timeout_seconds = forms.FloatField(
        label="Connect timeout (seconds)",
        min_value=0.1,
        max_value=60,
        required=False,
        help_text=f"The longest wait for a connection (default {DEFAULT_CONNECT_TIMEOUT_SECONDS:g}).",
    )
    max_redirects = forms.IntegerField(
        label="Redirects to follow",
        min_value=0,
        max_value=MAX_REDIRECTS_LIMIT,
        required=False,
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
        help_text=(
            f"With a callback: fail as timed out if none arrives in time (default {DEFAULT_CALLBACK_TIMEOUT_SECONDS})."
        ),
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
        config["fail_on_status"] = (
            bool(self.cleaned_data.get("fail_on_status")) if "fail_on_status" in self.data else True
        )
        config.setdefault("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
        if config.get("wait_for_callback"):
            config.setdefault("callback_timeout_seconds", DEFAULT_CALLBACK_TIMEOUT_SECONDS)
        else:
            config.pop("wait_for_callback", None)
            config.pop("callback_timeout_seconds", None)
        return config


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

    In the submit request (inline), the connect and read timeouts are cut to
    EVENTS_INLINE_STEP_MAX_SECONDS (the step's log says so), and the request with all its
    redirects gets that long in all (``total_timeout`` of ``events.outbound.request``).

    The request goes out through ``events.outbound``, which every HTTP-calling node shares;
    its docstrings hold the details:

    - destinations: the host is resolved before connecting and the request refused when
      an address is loopback, private, link-local, unspecified, multicast, reserved,
      shared or a cloud metadata service, unless ``settings.EVENTS_HTTP_ALLOWED_HOSTS``
      names the host exactly; the connection goes to the very address checked; every
      redirect is checked again; proxies are never used. A refusal fails the step at
      once, whatever its retry policy (``NodeError(retryable=False)``);
    - ``Accept-Encoding: identity``, and the answer read up to 1 MiB, counted as it
      travels and again after any decoding; a larger one fails the step;
    - ``Idempotency-Key: <task id>`` (a configured header of that name wins), the same for
      every attempt and redirect of the step;
    - with ``settings.EVENTS_HTTP_SIGNING_SECRET``: ``webhook-id`` (the task id),
      ``webhook-timestamp`` and ``webhook-signature`` (Standard Webhooks), and the older
      ``X-Signature`` over the body alone; these replace configured headers of the same
      names.

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
    def test_run_answers(cls, config):
        return ("response", "callback") if config.get("wait_for_callback") else ("response",)

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
        headers = ctx.render(ctx.config.get("headers") or {}, extra)
        body = ctx.render(ctx.config.get("body") or "", extra)
        if waits and not body:
            body = json.dumps(
                {
                    "taskId": extra["callback"]["task_id"],
                    "callbackUrl": extra["callback"]["url"],
                    "callbackToken": extra["callback"]["token"],
                }
            )
            if not any(name.lower() == "content-type" for name in headers):
                headers["Content-Type"] = "application/json"
        max_redirects = ctx.config.get("max_redirects")
        timeout = float(ctx.config.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS)
        connect_timeout = float(ctx.config.get("connect_timeout_seconds") or DEFAULT_CONNECT_TIMEOUT_SECONDS)
        try:
            answer = ctx.outbound_request(
                method,
                url,
                headers=headers,
                content=body.encode() if body else b"",
                message_id=str(ctx.task.pk),
                timeout=ctx.bounded_wait(timeout, what="the read timeout"),
                connect_timeout=ctx.bounded_wait(connect_timeout, what="the connect timeout"),
                max_redirects=DEFAULT_MAX_REDIRECTS if max_redirects in (None, "") else int(max_redirects),
                total_timeout=ctx.wait_limit(),
                log=ctx.log,
            )
        except outbound.DestinationRefused as exc:
            raise NodeError(str(exc), retryable=False) from None
        except outbound.OutboundError as exc:
            raise NodeError(str(exc)) from None
        text = answer.body.decode(answer.encoding, errors="replace")
        ctx.log(f"answered {answer.status_code}")
        if "\x00" in text:
            text = text.replace("\x00", "\ufffd")
            ctx.log("the answer holds NUL characters, which cannot be stored: each is kept as U+FFFD in output.body")
        output = {
            "status_code": answer.status_code,
            "headers": answer.headers,
            "body": text,
            "url": answer.url,
            "redirects": answer.redirects,
        }
        output.update(_storable_json(ctx, text))
        if ctx.config.get("fail_on_status", True) and answer.status_code >= 400:
            raise NodeError(f"{method} {answer.url} answered {answer.status_code}: {text[:200]}")
        if waits:
            return Waiting(output=output)
        return output


def _storable_json(ctx, text):
    """``{"json": the answer parsed}`` when it is JSON that every database can store, else ``{}``.

    JSON holding NaN, Infinity (or 1e999, which reads as Infinity), NUL characters or unpaired
    surrogates would fail to save and leave the step running until its lease expired: such an
    answer is kept as text only, in ``body``, and a log line says why.
    """
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return {}  # not JSON: the body is the answer
    problem = storage_problem(parsed, "json")
    if problem:
        ctx.log(f"the answer is kept as text only (output.body), not as output.json: {problem}")
        return {}
    return {"json": parsed}
