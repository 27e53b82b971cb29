"""What a test run found: a timeline per run, the captured effects, and how the record and the waiting page end.

Plain data. Times are the test run's clock (``TestRunResult.submitted_at`` is the submit; delays,
backoffs, pauses and callback deadlines moved it on instead of being waited for).
``TestRunResult.to_dict()`` is all of it as JSON; ``TestRunResult.comparable()`` the part a replay compares.
"""

import datetime
import uuid
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Step:
    """One node's task in a test run, as a run's timeline shows it."""

    id: uuid.UUID
    node_id: int
    type: str
    name: str
    label: str
    visible: bool
    branch: str  # "main", or "on_error": it ran because the step it is under failed
    depth: int  # in the tree, for display: 0 at the top level
    is_container: bool
    status: str  # pending, active, awaiting, complete, failed, cancelled, skipped
    phase: str  # "request" (it would have run inline, in the submit request) or "worker" (after it, in a worker)
    attempt: int
    max_attempts: int
    due_at: datetime.datetime | None  # a deferred step: when it would have started
    deadline_at: datetime.datetime | None  # a step waiting for a callback: its deadline
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    rendered_config: dict[str, Any] | None  # its config with the templates rendered, as it ran last
    output: dict[str, Any]
    error: str
    failure: str  # raised, callback, timeout, retries, schedule (RunTask.Failure)
    subtext: str
    logs: list[str]
    error_branch_taken: bool  # it failed and its error branch took care of it
    canned: dict[str, Any] | None = None  # the canned answers it was given (responses, callback)
    child_run: int | None = None  # the index of the run it started (trigger_event, event_type)


@dataclass
class SimulatedRun:
    """One run of a test run: the submission (index 0), or one a step started (trigger_event, event_type)."""

    index: int
    event: str
    depth: int
    status: str  # running, complete, failed, cancelled (Run.Status)
    error: str
    subtext: str
    properties: dict[str, Any]
    parent_index: int | None
    finished_at: datetime.datetime | None
    steps: list[Step] = field(default_factory=list)  # in tree order


@dataclass
class CapturedEmail:
    """An email a step would have sent, as rendered."""

    run: Any  # the run's index (its id while the test run runs)
    node_id: int | None
    node: str
    at: datetime.datetime
    to: list[str]
    subject: str
    body: str
    from_email: str
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)


@dataclass
class CapturedRequest:
    """An HTTP request a step would have sent, and the canned response that answered it instead."""

    run: Any
    node_id: int | None
    node: str
    attempt: int
    at: datetime.datetime
    method: str
    url: str
    headers: dict[str, str]
    body: str
    response: dict[str, Any]  # {"status", "json"}, or {"error"}: what answered it
    canned: bool  # the admin's canned answer (True) or the default 200 {} (False)


@dataclass
class WaitingEnd:
    """How the waiting page would end: its state ("done", "failed", "working"), message and redirect."""

    state: str
    message: str
    redirect_url: str
    subtext: str


@dataclass
class TestRunResult:
    """A test run of one tree against one submission's data. Nothing of it was sent, stored or queued."""

    __test__ = False  # not a pytest test class, whatever its name

    form: str  # the form's slug
    event: str
    version: str  # what ran: "draft", "version 3", ...
    submitted_at: datetime.datetime
    finished_at: datetime.datetime  # the clock when the test run ended
    data_before: dict[str, Any]
    flags_before: dict[str, Any]
    data: dict[str, Any]  # the record's data once every step ran (a scratch copy: the record is unchanged)
    flags: dict[str, Any]
    runs: list[SimulatedRun]
    emails: list[CapturedEmail]
    http_calls: list[CapturedRequest]
    waiting: WaitingEnd
    unused_canned: list[str] = field(default_factory=list)  # canned answers that name no node that called out
    stopped: str = ""  # why the test run stopped before every run ended (a bound was reached), else ""
    # The ids and references of the test run's runs: new in each test run, masked when two are compared.
    run_ids: dict[str, str] = field(default_factory=dict)

    @property
    def run(self) -> SimulatedRun:
        """The submission's run."""
        return self.runs[0]

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def steps(self) -> list[Step]:
        return self.run.steps

    def step(self, name: str, run: int = 0) -> Step:
        """The step of the node called ``name`` (or labelled so) in run ``run``."""
        return next(step for step in self.runs[run].steps if name in (step.name, step.label))

    @property
    def failed_steps(self) -> list[dict[str, Any]]:
        """Every step that failed, in every run, handled by its error branch or not."""
        return [
            {
                "run": run.index,
                "event": run.event,
                "node_id": step.node_id,
                "node": step.name or step.label,
                "error": step.error,
                "failure": step.failure,
                "handled": step.error_branch_taken,
            }
            for run in self.runs
            for step in run.steps
            if step.status == "failed"
        ]

    @property
    def changed_data(self) -> dict[str, tuple[Any, Any]]:
        """{field: (before, after)} for each field the steps changed."""
        keys = sorted(set(self.data_before) | set(self.data))
        return {
            key: (self.data_before.get(key), self.data.get(key))
            for key in keys
            if self.data_before.get(key) != self.data.get(key)
        }

    def offset(self, moment: datetime.datetime | None) -> float | None:
        """Seconds from the submit to ``moment``."""
        return None if moment is None else (moment - self.submitted_at).total_seconds()

    def comparable(self) -> dict[str, Any]:
        """What a replay compares between two test runs of one record: final values, flags, the emails
        that would be sent (to, subject), the HTTP calls made (method, URL), the steps that fail, and
        how the run and the waiting page end. The runs' own ids and references (which templates may
        show: ``{{ run.reference }}``) are new in every test run: they read as ``‹run 0›`` and so on."""
        return _masked(
            self.run_ids,
            {
                "status": self.status,
                "data": self.data,
                "flags": self.flags,
                "emails": [{"to": email.to, "subject": email.subject} for email in self.emails],
                "http_calls": [{"method": call.method, "url": call.url} for call in self.http_calls],
                "failed_steps": [
                    {key: failed[key] for key in ("event", "node", "error", "handled")} for failed in self.failed_steps
                ],
                "waiting": {"state": self.waiting.state, "message": self.waiting.message},
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """All of it as JSON-ready data: times as ISO text, ids as text."""
        return _plain(self) | {"status": self.status, "failed_steps": self.failed_steps}


def _masked(replacements: dict[str, str], value: Any) -> Any:
    if isinstance(value, str):
        for text, mask in replacements.items():
            value = value.replace(text, mask)
        return value
    if isinstance(value, dict):
        return {key: _masked(replacements, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(replacements, item) for item in value]
    return value


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {item.name: _plain(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value
