"""What a run does outside our database, and the time it runs at: the real thing, or a test run's stand-ins.

The engine and the node types reach the world through these few functions: ``now`` (the clock
every due time, deadline, backoff and timestamp is read from), ``sleep`` (a pause), ``send_mail``
(an email), ``http_request`` (an outbound HTTP request), ``job_sent`` (a queue hand-off, which
``events.queue`` gives a sandbox instead of the broker) and ``tree_override`` (which tree an event
runs: its live version, or in a test run of the drafts its draft). Outside a test run they are the real
thing and cost one context-variable read.

A test run (``events.testrun``) installs a ``Sandbox`` for the duration of a ``sandboxed`` block:
its clock stands still until the test run moves it on, pauses move the clock instead of
waiting, emails and HTTP requests are captured (an HTTP request is answered by a canned
response, nothing leaves the machine) and hand-offs are collected instead of reaching the broker.
"""

import datetime
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from django.utils import timezone


class Sandbox(Protocol):
    """A test run's stand-ins for the world outside (see ``events.testrun.capture``)."""

    def now(self) -> datetime.datetime: ...

    def sleep(self, seconds: float) -> None: ...

    def send_mail(self, message: Any, *, ctx: Any = None) -> None: ...

    def http_request(self, method: str, url: str, *, ctx: Any = None, **options: Any) -> Any: ...

    def job_sent(self, func: str, args: tuple) -> None: ...

    def tree(self, form_id: int, event: str) -> list[dict[str, Any]] | None: ...


_sandbox: ContextVar[Sandbox | None] = ContextVar("events_sandbox", default=None)


@contextmanager
def sandboxed(sandbox: Sandbox) -> Iterator[Sandbox]:
    """Everything run inside the block sees ``sandbox`` in place of the world outside."""
    token = _sandbox.set(sandbox)
    try:
        yield sandbox
    finally:
        _sandbox.reset(token)


def sandbox() -> Sandbox | None:
    """The test run's sandbox, when one is active; None for the real thing."""
    return _sandbox.get()


def now() -> datetime.datetime:
    """The time now: the test run's clock in a sandbox, else ``timezone.now()``."""
    active = _sandbox.get()
    return active.now() if active is not None else timezone.now()


def sleep(seconds: float) -> None:
    """Wait ``seconds``; in a sandbox the clock moves on instead and nothing waits."""
    active = _sandbox.get()
    if active is not None:
        active.sleep(seconds)
    else:
        time.sleep(seconds)


def send_mail(message: Any, *, ctx: Any = None) -> None:
    """Send one ``django.core.mail.EmailMessage``; in a sandbox it is captured, not sent.

    ``ctx``: the step's NodeContext (a sandbox records which step it came from).
    """
    active = _sandbox.get()
    if active is not None:
        active.send_mail(message, ctx=ctx)
    else:
        message.send()


def http_request(method: str, url: str, *, ctx: Any = None, **options: Any) -> Any:
    """One outbound request through ``events.outbound.request``; in a sandbox a canned answer, nothing sent."""
    active = _sandbox.get()
    if active is not None:
        return active.http_request(method, url, ctx=ctx, **options)
    from . import outbound  # imported where used: the HTTP client is heavy, and most processes never call out

    return outbound.request(method, url, **options)


def tree_override(form_id: int, event: str) -> list[dict[str, Any]] | None:
    """The tree an event of this form runs instead of its live version: a test run of the drafts runs
    each event's draft (what trigger_event fires too). None outside a test run: the live version."""
    active = _sandbox.get()
    return active.tree(form_id, event) if active is not None else None
