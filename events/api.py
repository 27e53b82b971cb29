"""The JSON API: callbacks from external systems, progress updates, and look-ups.

Every failure answers one shape, ``{"error": {"code", "message", "details"}}``,
with a stable ``code``. A caller without a valid key cannot tell a wrong key
from an unknown task: both are 401.
"""

import hmac
import re
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.http import Http404
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.responses import Status
from ninja.security import APIKeyHeader, HttpBearer
from pydantic import Field, field_validator

from forms_app.models import Record

from . import engine
from .models import ApiKey, Run, RunTask, secret_hash


TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ApiError(Exception):
    def __init__(self, status, code, message, details=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


# Authentication ---------------------------------------------------------------------------


class Credential:
    """What the caller presented: an API key that matched, or a raw token to check against one task."""

    def __init__(self, raw):
        self.raw = raw
        self.api_key = ApiKey.authenticate(raw)

    def allows_task(self, task):
        if self.api_key is not None:
            return True
        return bool(task.callback_token_hash) and hmac.compare_digest(task.callback_token_hash, secret_hash(self.raw))


class BearerCredential(HttpBearer):
    def authenticate(self, request, token):
        if not token:
            return None
        credential = Credential(token)
        if credential.api_key is None and request.headers.get("X-Api-Key"):
            # A valid X-Api-Key still counts when the bearer value is not a key.
            header = Credential(request.headers["X-Api-Key"])
            if header.api_key is not None:
                return header
        return credential


class HeaderCredential(APIKeyHeader):
    param_name = "X-Api-Key"

    def authenticate(self, request, key):
        return Credential(key) if key else None


class BearerKey(HttpBearer):
    def authenticate(self, request, token):
        return ApiKey.authenticate(token)


class HeaderKey(APIKeyHeader):
    param_name = "X-Api-Key"

    def authenticate(self, request, key):
        return ApiKey.authenticate(key)


key_or_token = [BearerCredential(), HeaderCredential()]
key_only = [BearerKey(), HeaderKey()]

api = NinjaAPI(
    title="Form events API",
    version="1",
    description=(
        "Callbacks from external systems for tasks that wait, progress updates, and look-ups of "
        "tasks, runs and records. Authenticate with `Authorization: Bearer <key>` or `X-Api-Key: <key>`; "
        "a task's callback token may be used instead of a key for that task's callback and progress."
    ),
    openapi_url="/openapi.json",
    docs_url="/docs",
    urls_namespace="api",
)


# Schemas --------------------------------------------------------------------------------


class ErrorBody(Schema):
    code: str = Field(examples=["not_awaiting"])
    message: str
    details: Any = None


class ErrorOut(Schema):
    error: ErrorBody


ERRORS = {status: ErrorOut for status in (400, 401, 404, 409, 413, 422)}


def storable(value, path="value"):
    """Refuse text PostgreSQL cannot store (NUL characters, lone surrogates), anywhere in ``value``."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{path} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path} contains an unpaired surrogate") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key, path)
            storable(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            storable(item, f"{path}[{index}]")
    return value


class LogLine(Schema):
    at: datetime
    line: str


class CallbackIn(Schema):
    taskId: str = Field(min_length=1, max_length=100)
    status: Literal["SUCCESS", "FAILURE"]
    logs: str | list[str] | None = None
    output: dict[str, Any] | None = None
    subtext: str | None = Field(default=None, max_length=500)

    @field_validator("taskId", "logs", "output", "subtext")
    @classmethod
    def text_is_storable(cls, value, info):
        return storable(value, info.field_name)

    def log_lines(self):
        if self.logs is None:
            return []
        return [self.logs] if isinstance(self.logs, str) else list(self.logs)


class CallbackOut(Schema):
    taskId: str
    status: str
    applied: bool
    duplicate: bool = False
    message: str


class ProgressIn(Schema):
    subtext: str = Field(max_length=500)
    logs: str | list[str] | None = None

    @field_validator("subtext", "logs")
    @classmethod
    def text_is_storable(cls, value, info):
        return storable(value, info.field_name)


class TaskOut(Schema):
    id: UUID
    run: UUID
    type: str
    name: str
    label: str
    status: str
    attempt: int
    max_attempts: int
    due_at: datetime | None
    deadline_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    subtext: str
    error: str
    output: dict[str, Any]
    logs: list[LogLine]


class RunOut(Schema):
    id: UUID
    reference: str
    form: str
    record: str
    event: str
    status: str
    subtext: str
    error: str
    created_at: datetime
    finished_at: datetime | None
    tasks: list[TaskOut]


class RunSummary(Schema):
    id: UUID
    reference: str
    event: str
    status: str
    subtext: str
    created_at: datetime
    finished_at: datetime | None


class RecordOut(Schema):
    token: str
    form: str
    data: dict[str, Any]
    flags: dict[str, Any]
    is_complete: bool
    created_at: datetime
    runs: list[RunSummary]


def task_out(task):
    return {
        "id": task.pk, "run": task.run_id, "type": task.type, "name": task.name, "label": task.label,
        "status": task.status, "attempt": task.attempt, "max_attempts": task.max_attempts,
        "due_at": task.due_at, "deadline_at": task.deadline_at, "started_at": task.started_at,
        "finished_at": task.finished_at, "subtext": task.subtext, "error": task.error,
        "output": task.output, "logs": task.logs,
    }


def _task_for(credential, task_id):
    """The task a credential may act on; 401 for a bad credential whether or not the task exists."""
    try:
        task = RunTask.objects.filter(pk=UUID(str(task_id))).first()
    except ValueError:
        task = None
    if credential.api_key is None:
        if task is None or not credential.allows_task(task):
            raise AuthenticationError()
    if task is None:
        raise ApiError(404, "task_not_found", f"No task has the id {task_id}.")
    return task


# Endpoints ------------------------------------------------------------------------------


@api.post("/external-events/callback/", auth=key_or_token, response={200: CallbackOut, **ERRORS},
          summary="Complete or fail an awaiting task", operation_id="callback")
def callback(request, payload: CallbackIn):
    task = _task_for(request.auth, payload.taskId)
    result = engine.task_callback(
        task_id=task.pk, status=payload.status, logs=payload.log_lines(), output=payload.output, subtext=payload.subtext
    )
    if result.applied:
        return CallbackOut(taskId=str(task.pk), status=result.status, applied=True, message="Callback applied.")
    if result.duplicate:
        return CallbackOut(
            taskId=str(task.pk), status=result.status, applied=False, duplicate=True,
            message="This callback was already applied; nothing changed.",
        )
    raise ApiError(409, "not_awaiting", f"The task is {result.status}, not awaiting a callback.",
                   {"status": result.status})


@api.put("/event-workflow-tasks/{task_id}", auth=key_or_token, response={200: TaskOut, **ERRORS},
         summary="Update a task's progress text (and its run's)", operation_id="task_progress")
def task_progress(request, task_id: str, payload: ProgressIn):
    task = _task_for(request.auth, task_id)
    logs = [payload.logs] if isinstance(payload.logs, str) else list(payload.logs or [])
    changed, status = engine.task_progress(task_id=task.pk, subtext=payload.subtext, logs=logs)
    if not changed:
        raise ApiError(409, "task_finished", f"The task is {status}; progress can only be set while it runs or awaits.",
                       {"status": status})
    task.refresh_from_db()
    return task_out(task)


@api.get("/tasks/{task_id}", auth=key_only, response={200: TaskOut, **ERRORS}, summary="Look up a task",
         operation_id="task_detail")
def task_detail(request, task_id: UUID):
    task = RunTask.objects.filter(pk=task_id).first()
    if task is None:
        raise ApiError(404, "task_not_found", f"No task has the id {task_id}.")
    return task_out(task)


@api.get("/runs/{run_id}", auth=key_only, response={200: RunOut, **ERRORS}, summary="Look up a run and its tasks",
         operation_id="run_detail")
def run_detail(request, run_id: UUID):
    run = Run.objects.select_related("form", "record").filter(pk=run_id).first()
    if run is None:
        raise ApiError(404, "run_not_found", f"No run has the id {run_id}.")
    return {
        "id": run.pk, "reference": run.reference, "form": run.form.slug, "record": run.record.token,
        "event": run.event, "status": run.status, "subtext": run.subtext, "error": run.error,
        "created_at": run.created_at, "finished_at": run.finished_at,
        "tasks": [task_out(task) for task in run.tasks.all()],
    }


@api.get("/records/{token}", auth=key_only, response={200: RecordOut, **ERRORS},
         summary="Look up a record, its flags and runs", operation_id="record_detail")
def record_detail(request, token: str):
    record = Record.objects.select_related("form").filter(token=token).first() if TOKEN_PATTERN.fullmatch(token) else None
    if record is None:
        raise ApiError(404, "record_not_found", "No record has this token.")
    return {
        "token": record.token, "form": record.form.slug, "data": record.data, "flags": record.flags,
        "is_complete": record.is_complete, "created_at": record.created_at,
        "runs": [
            {"id": run.pk, "reference": run.reference, "event": run.event, "status": run.status,
             "subtext": run.subtext, "created_at": run.created_at, "finished_at": run.finished_at}
            for run in record.runs.order_by("created_at")
        ],
    }


# Errors ---------------------------------------------------------------------------------


def error_response(request, status, code, message, details=None):
    return api.create_response(request, {"error": {"code": code, "message": message, "details": details}},
                               status=status)


@api.exception_handler(ApiError)
def on_api_error(request, exc):
    return error_response(request, exc.status, exc.code, exc.message, exc.details)


@api.exception_handler(AuthenticationError)
def on_authentication_error(request, exc):
    return error_response(request, 401, "unauthorized",
                          "Missing or invalid credentials: send Authorization: Bearer <key> or X-Api-Key.")


@api.exception_handler(ValidationError)
def on_validation_error(request, exc):
    details = [
        {"loc": [str(part) for part in error.get("loc", [])], "msg": error.get("msg", ""), "type": error.get("type", "")}
        for error in exc.errors
    ]
    return error_response(request, 422, "invalid_request", "The request does not match the schema.", details)


@api.exception_handler(HttpError)
def on_http_error(request, exc):
    if exc.status_code == 400:
        return error_response(request, 400, "malformed_json", "The request body is not valid JSON.")
    return error_response(request, exc.status_code, "http_error", str(exc))


@api.exception_handler(Http404)
def on_not_found(request, exc):
    return error_response(request, 404, "not_found", "Not found.")
