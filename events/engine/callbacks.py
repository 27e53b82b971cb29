"""Steps that wait for an external system: awaiting, callbacks, progress and deadlines."""

import hashlib
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from django.urls import reverse_lazy

from .. import effects
from ..hotsql import db_value, rows, update_statement
from ..models import Run, RunTask, secret_hash
from ..storable import SUBTEXT_MAX_LENGTH
from .failures import failure_consequence
from .reads import task_with_run
from .sequences import sequence_hand_on
from .snapshot import snapshot_node

# The callback endpoint's path, from its URL name (events/api.py), looked up when first used:
# events.api imports the engine, so the URLconf cannot be loaded while this module is.
CALLBACK_PATH = reverse_lazy("api:callback")


def task_await(*, task: RunTask, timeout_seconds: float) -> dict[str, str]:
    """active → awaiting with a deadline and a fresh callback token (only its hash is kept)."""
    token = secrets.token_urlsafe(24)
    deadline = effects.now() + timedelta(seconds=timeout_seconds)
    RunTask.objects.filter(pk=task.pk, status=RunTask.Status.ACTIVE).update(
        status=RunTask.Status.AWAITING,
        deadline_at=deadline,
        callback_token_hash=secret_hash(token),
        lease_expires_at=None,
    )
    task.status, task.deadline_at = RunTask.Status.AWAITING, deadline
    return {
        "task_id": str(task.pk),
        "url": settings.EVENTS_PUBLIC_URL.rstrip("/") + str(CALLBACK_PATH),
        "token": token,
        "deadline": deadline.isoformat(),
    }


def task_store_waiting(
    *, task: RunTask, output: dict[str, Any] | None, logs: list[dict[str, str]], debug: dict[str, Any] | None = None
) -> None:
    """Keep what the waiting action produced, under any callback output that already arrived."""
    with transaction.atomic():
        row = RunTask.objects.select_for_update().only("output", "logs", "debug").get(pk=task.pk)
        changes = {"output": {**(output or {}), **row.output}, "logs": RunTask.capped_logs(row.logs, logs)}
        if debug is not None:
            changes["debug"] = row.debug + [debug]
        RunTask.objects.filter(pk=task.pk).update(**changes)


@dataclass
class CallbackResult:
    applied: bool
    status: str
    duplicate: bool = False


def callback_digest(*, status: str, logs: list[str], output: dict[str, Any] | None, subtext: str | None) -> str:
    canonical = json.dumps({"status": status, "logs": logs, "output": output, "subtext": subtext}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def task_callback(
    *,
    task_id: uuid.UUID | str,
    status: str,
    logs: Sequence[str] = (),
    output: dict[str, Any] | None = None,
    subtext: str | None = None,
    note: str = "",
    error: str = "",
) -> CallbackResult:
    """Apply an external system's answer to an awaiting task. The first valid one wins.

    SUCCESS completes the task and resumes its sequence in the background;
    FAILURE fails it (and, with nothing to catch it, the run). A repeat of the
    applied callback changes nothing and says so; anything else on a task that
    is no longer awaiting is refused with the task's current status. ``note``
    (a log line) and ``error`` serve callers other than the external system, such
    as an admin completing or failing a task by hand.
    """
    digest = callback_digest(status=status, logs=list(logs) + ([note] if note else []), output=output, subtext=subtext)
    now = effects.now()
    with transaction.atomic():
        row = task_with_run(task_id, lock=True)
        if row is None:
            raise RunTask.DoesNotExist(f"No task has the id {task_id}.")
        if row.status != RunTask.Status.AWAITING:
            return CallbackResult(applied=False, status=row.status, duplicate=row.callback_digest == digest)
        succeeded = status == "SUCCESS"
        run_id, task_pk = db_value(Run, "id", row.run_id, connection), db_value(RunTask, "id", row.pk, connection)
        lines = [RunTask.log_line(line, at=now) for line in logs]
        if note:
            lines.append(RunTask.log_line(note, at=now))
        changes = {
            "status": RunTask.Status.COMPLETE if succeeded else RunTask.Status.FAILED,
            "finished_at": now,
            "output": {**row.output, **(output or {})},
            "logs": RunTask.capped_logs(row.logs, lines),
            "callback_digest": digest,
            "error": ""
            if succeeded
            else (error or f"The external system reported FAILURE{': ' + subtext if subtext else ''}."),
            "failure": "" if succeeded else RunTask.Failure.CALLBACK,
        }
        if subtext is not None:
            changes["subtext"] = subtext[:SUBTEXT_MAX_LENGTH]
        # Hot statements (every callback): written as SQL, not compiled per call (events.hotsql).
        if not _answer_write(run_id, task_pk, changes):
            row.refresh_from_db(fields=["status", "callback_digest"])
            return CallbackResult(applied=False, status=row.status, duplicate=row.callback_digest == digest)
        for key, value in changes.items():
            setattr(row, key, value)
        # What follows commits with the answer: the next step handed off, or the failure's consequence.
        if succeeded:
            sequence_hand_on(run=row.run, task=row)
        else:
            failure_consequence(
                run=row.run, task=row, node=snapshot_node(row.run.snapshot, row.node_id) or {}, hand_off=True
            )
    return CallbackResult(applied=True, status=changes["status"])


def _answer_write(run_id, task_pk, changes):
    """The awaiting task's answer, and the run's subtext when the answer brings one (on PostgreSQL in
    one statement: one round trip fewer). Returns whether the task was still awaiting."""
    answer, answer_params = update_statement(
        RunTask, connection, changes, where="id = %s AND status = %s", params=[task_pk, RunTask.Status.AWAITING]
    )
    statements = [(answer, answer_params)]
    if "subtext" in changes:
        subtext, subtext_params = update_statement(
            Run, connection, {"subtext": changes["subtext"]}, where="id = %s", params=[run_id]
        )
        if connection.vendor == "postgresql":
            answer = f"WITH subtext AS ({subtext}) {answer} RETURNING 1"
            return bool(rows(connection, answer, [*subtext_params, *answer_params]))
        statements.insert(0, (subtext, subtext_params))
    with connection.cursor() as cursor:
        for sql, params in statements:
            cursor.execute(sql, params)
        return bool(cursor.rowcount)


def task_progress(*, task_id: uuid.UUID | str, subtext: str | None, logs: Sequence[str] = ()) -> tuple[bool, str]:
    """Progress from outside while a task runs or awaits: its subtext (and its run's), more log lines.

    Returns the task's status; nothing changes unless it is active or awaiting.
    """
    with transaction.atomic():
        row = RunTask.objects.select_for_update().get(pk=task_id)
        if row.status not in (RunTask.Status.ACTIVE, RunTask.Status.AWAITING):
            return False, row.status
        changes = {"logs": RunTask.capped_logs(row.logs, [RunTask.log_line(line) for line in logs])}
        if subtext is not None:
            changes["subtext"] = subtext[:SUBTEXT_MAX_LENGTH]
            Run.objects.filter(pk=row.run_id).update(subtext=subtext[:SUBTEXT_MAX_LENGTH])
        RunTask.objects.filter(pk=row.pk).update(**changes)
    return True, row.status


def awaiting_expire(*, now: datetime | None = None, tasks: QuerySet[RunTask] | None = None) -> int:
    """Fail every awaiting task (of ``tasks``, default all) whose deadline has passed (timed out). Returns how many."""
    expired = 0
    tasks = RunTask.objects.all() if tasks is None else tasks
    for task in tasks.awaiting_past_deadline(now).select_related("run")[:200]:
        error = "Timed out: no callback arrived before the deadline."
        with transaction.atomic():
            won = RunTask.objects.filter(pk=task.pk, status=RunTask.Status.AWAITING).update(
                status=RunTask.Status.FAILED,
                finished_at=effects.now(),
                error=error,
                failure=RunTask.Failure.TIMEOUT,
                logs=RunTask.capped_logs(
                    task.logs,
                    [RunTask.log_line(f"timed out waiting for a callback (deadline {task.deadline_at.isoformat()})")],
                ),
            )
            if won:
                expired += 1
                task.status, task.error, task.failure = RunTask.Status.FAILED, error, RunTask.Failure.TIMEOUT
                failure_consequence(
                    run=task.run, task=task, hand_off=True, node=snapshot_node(task.run.snapshot, task.node_id) or {}
                )
    return expired
