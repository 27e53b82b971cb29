"""The sandbox of a test run: its clock, and what it captures in place of sending (``events.effects``)."""

import datetime
import ipaddress
import json
import time
from collections import deque
from typing import Any

from ..models import Node
from ..outbound import DestinationRefused, OutboundError, guard
from .canned import DEFAULT, Canned
from .result import CapturedEmail, CapturedRequest


class TestRunStopped(BaseException):
    """A test run reached its bound (EVENTS_TEST_RUN_MAX_SECONDS): raised from inside the engine to stop it.

    A BaseException, so that the engine's handlers of a step's errors (``except Exception``) do not
    take it for the step failing: it unwinds the whole test run, whose transaction is rolled back.
    """

    __test__ = False


class Capture:
    """A test run's world: a clock that only moves when told, captured emails and requests, collected jobs.

    Each email and request is told the step (``NodeContext``) it comes from; ``canned`` answers each
    node's requests and callbacks ({node name or id as text: Canned}).
    """

    def __init__(
        self, *, start: datetime.datetime, canned: dict[str, Canned], deadline: float | None = None, drafts=False
    ):
        self.clock = start
        self.drafts = drafts  # the events a step fires run their drafts (a test run of the draft), else live
        self.deadline = deadline  # time.monotonic() past which the test run stops (TestRunStopped)
        self.canned = canned
        self.emails: list[CapturedEmail] = []
        self.requests: list[CapturedRequest] = []
        self.jobs: deque[str] = deque()
        self.used: set[str] = set()

    # events.effects.Sandbox ---------------------------------------------------------------------

    def now(self) -> datetime.datetime:
        # Every claim, log line and due time asks the clock: the bound is checked in the middle of
        # a walk too, so no single step or burst of child runs can hold the transaction past it.
        self.check_deadline()
        return self.clock

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TestRunStopped()

    def sleep(self, seconds: float) -> None:
        self.clock += datetime.timedelta(seconds=max(0.0, float(seconds)))

    def send_mail(self, message: Any, *, ctx: Any = None) -> None:
        where = _where(ctx)
        self.emails.append(
            CapturedEmail(
                run=where.get("run"),
                node_id=where.get("node_id"),
                node=where.get("node", ""),
                at=self.clock,
                to=list(message.to),
                cc=list(message.cc),
                bcc=list(message.bcc),
                subject=str(message.subject),
                body=str(message.body),
                from_email=str(message.from_email),
            )
        )

    def http_request(self, method: str, url: str, *, ctx: Any = None, **options: Any) -> Any:
        where = _where(ctx)
        node_id = where.get("node_id")
        canned, given = self.canned_for(where)
        attempt = getattr(getattr(ctx, "task", None), "attempt", 1) or 1  # this task's attempt: one answer each
        response = canned.response(attempt)
        content = options.get("content") or b""
        headers = {"Idempotency-Key": options["message_id"]} if options.get("message_id") else {}
        headers.update(options.get("headers") or {})
        refusal = _refusal(url)
        self.requests.append(
            CapturedRequest(
                run=where.get("run"),
                node_id=node_id,
                node=where.get("node", ""),
                attempt=attempt,
                at=self.clock,
                method=method,
                url=url,
                headers=headers,
                body=content.decode("utf-8", errors="replace") if isinstance(content, bytes) else str(content),
                response={"error": refusal} if refusal else response.as_document(),
                canned=given,
            )
        )
        log = options.get("log")
        if refusal:  # what a real run would refuse before connecting, the test run refuses too
            raise DestinationRefused(refusal)
        if log is not None:
            log("test run: the request was not sent; a canned response answers it")
        if response.error:
            raise OutboundError(response.error)
        from ..outbound.transport import Answer  # loads httpx: only in a test run that calls out

        return Answer(
            status_code=response.status,
            headers={"content-type": "application/json"},
            body=_json_bytes(response.json),
            encoding="utf-8",
            url=url,
        )

    def tree(self, form_id: int, event: str) -> list[dict[str, Any]] | None:
        return Node.objects.snapshot(form_id, event) if self.drafts else None

    def job_sent(self, func: str, args: tuple) -> None:
        if args:
            self.jobs.append(str(args[0]))

    # ---------------------------------------------------------------------------------------------

    def canned_for(self, where: dict[str, Any]) -> tuple[Canned, bool]:
        """The node's canned answers (by name, else by id) and whether the admin gave them."""
        for key in (where.get("name"), str(where.get("node_id"))):
            if key and key in self.canned:
                self.used.add(key)
                return self.canned[key], True
        return DEFAULT, False

    def advance_to(self, moment: datetime.datetime) -> None:
        """Fast-forward: the clock never goes back."""
        if moment > self.clock:
            self.clock = moment


def _refusal(url: str) -> str:
    """Why a real run would refuse to call ``url`` before connecting, as far as its text tells (no name is
    resolved: a host name's addresses are checked when a real run sends): not http(s), or an IP address
    that is private, loopback, link-local or a metadata service and not in EVENTS_HTTP_ALLOWED_HOSTS."""
    try:
        target = guard.parse_target(url)
    except DestinationRefused as exc:
        return str(exc)
    try:
        address = ipaddress.ip_address(target.host)
    except ValueError:
        return ""
    if guard.is_forbidden_address(address) and not guard.is_allowed_host(target.host):
        return (
            f"Refused to connect to {target.host}: private, loopback, link-local and metadata addresses are "
            "blocked. Add the host to EVENTS_HTTP_ALLOWED_HOSTS to allow it."
        )
    return ""


def _where(ctx: Any) -> dict[str, Any]:
    """Which step calls out: its run's id (the runner turns it into the run's index), node id, name, label."""
    if ctx is None:
        return {}
    node = ctx.node or {}
    return {
        "run": ctx.run.pk,
        "node_id": node.get("id"),
        "name": node.get("name", ""),
        "node": node.get("name") or node.get("label") or node.get("type", ""),
    }


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()
