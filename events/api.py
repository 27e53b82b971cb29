"""The JSON API: callbacks from external systems, progress updates, and look-ups.

Every failure answers one shape, ``{"error": {"code", "message", "details"}}``,
with a stable ``code``. A caller without a valid key cannot tell a wrong key
from an unknown task: both are 401. A client address with too many failed
authentications (EVENTS_API_AUTH_FAILURE_LIMIT) is answered 429, with
``Retry-After``, on every call that needs a credential until its window ends.
"""

import hmac
import json
import logging
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeAliasType
from uuid import UUID

from django.conf import settings
from django.http import Http404
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import APIKeyHeader, HttpBearer
from pydantic import Field, PlainValidator, WithJsonSchema, field_validator

from . import engine
from .middleware import DATABASE_UNAVAILABLE
from .models import ApiKey, Run, RunTask, record_model, secret_hash
from .storable import SUBTEXT_MAX_LENGTH
from .throttle import Throttle

logger = logging.getLogger("events.api")

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ApiError(Exception):
    def __init__(self, status, code, message, details=None, *, retry_after=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.retry_after = retry_after


# Authentication ---------------------------------------------------------------------------

AUTH_FAILURES = Throttle("api-auth-failures", "EVENTS_API_AUTH_FAILURE_LIMIT", "EVENTS_API_AUTH_FAILURE_WINDOW_SECONDS")


def refuse_after_failures(request):
    """First in every auth list: a client over its failed-authentication limit gets 429, its credential unchecked.

    Unchecked, so that guessing cannot go on behind the 429s. Failures are counted where every
    one of them ends, in ``on_authentication_error``; a call that authenticates counts nothing.
    """
    wait = AUTH_FAILURES.wait(request)
    if wait:
        raise ApiError(
            429,
            "too_many_failed_authentications",
            f"Too many failed authentications from this address; try again in {wait} s.",
            {"retry_after": wait},
            retry_after=wait,
        )
    return None  # ninja goes on to the next auth in the list: the real credential check


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


key_or_token = [refuse_after_failures, BearerCredential(), HeaderCredential()]
key_only = [refuse_after_failures, BearerKey(), HeaderKey()]


class NonFiniteNumber(ValueError):
    """NaN, Infinity, -Infinity, or a number beyond a double's range such as ``1e999``."""


def _finite_number(text):
    number = float(text)
    if not math.isfinite(number):
        raise NonFiniteNumber(text)
    return number


def _no_constant(name):
    raise NonFiniteNumber(name)


class StrictJsonParser(Parser):
    """JSON as RFC 8259 has it: NaN and Infinity (and 1e999, which would read as Infinity) are refused.

    Python's json module accepts them, but no database can store them (PostgreSQL's json type,
    SQLite's JSON check): a body that holds one is a 400, never a 500.
    """

    def parse_body(self, request):
        return json.loads(request.body, parse_float=_finite_number, parse_constant=_no_constant)


api = NinjaAPI(
    title="Form events API",
    version="1",
    description=(
        "Callbacks from external systems for tasks that wait, progress updates, and look-ups of "
        "tasks, runs and records. Authenticate with `Authorization: Bearer <key>` or `X-Api-Key: <key>`; "
        "a task's callback token may be used instead of a key for that task's callback and progress. "
        "Text may not hold NUL characters or unpaired surrogates, and numbers must be finite (no NaN, "
        "Infinity or 1e999): such a request is refused (422, or 400 for a number), as it could not be stored."
    ),
    openapi_url="/openapi.json",
    docs_url="/docs",
    urls_namespace="api",
    parser=StrictJsonParser(),
)


# Schemas --------------------------------------------------------------------------------


class ErrorBody(Schema):
    code: str = Field(examples=["not_awaiting"])
    message: str
    details: Any = None


class ErrorOut(Schema):
    error: ErrorBody


ERRORS = {status: ErrorOut for status in (400, 401, 404, 409, 413, 422, 429, 503)}


def storable(value, path="value"):
    """Refuse what PostgreSQL cannot store (NUL characters, lone surrogates, NaN, Infinity), anywhere in ``value``."""
    problem = RunTask.storage_problem(value, path)
    if problem:
        raise ValueError(problem)
    return value


# What the server refuses, declared in the OpenAPI document so that a schema-driven client agrees
# with it: text without NUL characters, finite numbers, and no more log lines per call than
# EVENTS_TASK_LOG_MAX_LINES_PER_CALL (read when the document is built). Unpaired surrogates are
# refused too, but said in words only: a pattern naming them is not a regex to many validators
# (Rust's, which schemathesis uses), and they would then ignore the whole pattern.
STORABLE_TEXT = r"^[^\u0000]*$"
Text = Annotated[str, WithJsonSchema({"type": "string", "pattern": STORABLE_TEXT})]


def _keys_are_text(schema):
    ((pattern, value),) = schema.pop("patternProperties").items()
    schema["propertyNames"] = {"pattern": pattern}
    schema["additionalProperties"] = value


def _lines_per_call(schema):
    schema["maxItems"] = settings.EVENTS_TASK_LOG_MAX_LINES_PER_CALL


JsonValue = TypeAliasType(
    "JsonValue",
    Annotated[
        Text
        | bool
        | int
        | float
        | None
        | list["JsonValue"]
        | Annotated[dict[Text, "JsonValue"], Field(json_schema_extra=_keys_are_text)],
        Field(
            description="Any JSON value. Text may not hold NUL characters or unpaired surrogates; "
            "numbers must be finite (NaN, Infinity and 1e999 are refused)."
        ),
    ],
)


def _an_object(value):
    # Checked here rather than through JsonValue: pydantic would refuse JSON nested deeper than its
    # recursion limit (about 250), which the document does not forbid. storable() checks the rest.
    if not isinstance(value, dict):
        raise ValueError("Input should be an object")
    return value


JsonObject = Annotated[
    dict[str, Any],
    PlainValidator(
        _an_object, json_schema_input_type=Annotated[dict[Text, JsonValue], Field(json_schema_extra=_keys_are_text)]
    ),
]
LogLines = Annotated[list[Text], Field(json_schema_extra=_lines_per_call)]


class LogLine(Schema):
    at: datetime
    line: str


class CallbackIn(Schema):
    taskId: str = Field(min_length=1, max_length=100, json_schema_extra={"pattern": STORABLE_TEXT})
    status: Literal["SUCCESS", "FAILURE"]
    logs: Text | LogLines | None = None
    output: JsonObject | None = None
    subtext: (
        Annotated[str, Field(max_length=SUBTEXT_MAX_LENGTH, json_schema_extra={"pattern": STORABLE_TEXT})] | None
    ) = None

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
    subtext: str = Field(max_length=SUBTEXT_MAX_LENGTH, json_schema_extra={"pattern": STORABLE_TEXT})
    logs: Text | LogLines | None = None

    def log_lines(self):
        if self.logs is None:
            return []
        return [self.logs] if isinstance(self.logs, str) else list(self.logs)

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
        "id": task.pk,
        "run": task.run_id,
        "type": task.type,
        "name": task.name,
        "label": task.label,
        "status": task.status,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "due_at": task.due_at,
        "deadline_at": task.deadline_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "subtext": task.subtext,
        "error": task.error,
        "output": task.output,
        "logs": task.logs,
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


def _uuid_or_404(task_id):
    try:
        return UUID(str(task_id))
    except ValueError:
        raise ApiError(404, "task_not_found", f"No task has the id {task_id}.") from None


def _refuse_too_many_lines(lines):
    limit = settings.EVENTS_TASK_LOG_MAX_LINES_PER_CALL
    if len(lines) > limit:
        raise ApiError(
            413,
            "too_many_log_lines",
            f"{len(lines)} log lines in one call; at most {limit} are taken (send them in several calls).",
            {"limit": limit, "lines": len(lines)},
        )
    return lines


# Endpoints ------------------------------------------------------------------------------


@api.post(
    "/external-events/callback/",
    auth=key_or_token,
    response={200: CallbackOut, **ERRORS},
    summary="Complete or fail an awaiting task",
    operation_id="callback",
)
def callback(request, payload: CallbackIn):
    if request.auth.api_key is None:
        task_id = _task_for(request.auth, payload.taskId).pk  # a task's own token: checked against the task
    else:
        task_id = _uuid_or_404(payload.taskId)  # a key may act on any task: the callback reads it once, locked
    logs = _refuse_too_many_lines(payload.log_lines())
    try:
        result = engine.task_callback(
            task_id=task_id, status=payload.status, logs=logs, output=payload.output, subtext=payload.subtext
        )
    except RunTask.DoesNotExist:
        raise ApiError(404, "task_not_found", f"No task has the id {payload.taskId}.") from None
    if result.applied:
        return CallbackOut(taskId=str(task_id), status=result.status, applied=True, message="Callback applied.")
    if result.duplicate:
        return CallbackOut(
            taskId=str(task_id),
            status=result.status,
            applied=False,
            duplicate=True,
            message="This callback was already applied; nothing changed.",
        )
    raise ApiError(
        409, "not_awaiting", f"The task is {result.status}, not awaiting a callback.", {"status": result.status}
    )


@api.put(
    "/event-workflow-tasks/{task_id}",
    auth=key_or_token,
    response={200: TaskOut, **ERRORS},
    summary="Update a task's progress text (and its run's)",
    operation_id="task_progress",
)
def task_progress(request, task_id: str, payload: ProgressIn):
    task = _task_for(request.auth, task_id)
    logs = _refuse_too_many_lines(payload.log_lines())
    changed, status = engine.task_progress(task_id=task.pk, subtext=payload.subtext, logs=logs)
    if not changed:
        raise ApiError(
            409,
            "task_finished",
            f"The task is {status}; progress can only be set while it runs or awaits.",
            {"status": status},
        )
    task.refresh_from_db()
    return task_out(task)


@api.get(
    "/tasks/{task_id}",
    auth=key_only,
    response={200: TaskOut, **ERRORS},
    summary="Look up a task",
    operation_id="task_detail",
)
def task_detail(request, task_id: UUID):
    task = RunTask.objects.filter(pk=task_id).first()
    if task is None:
        raise ApiError(404, "task_not_found", f"No task has the id {task_id}.")
    return task_out(task)


@api.get(
    "/runs/{run_id}",
    auth=key_only,
    response={200: RunOut, **ERRORS},
    summary="Look up a run and its tasks",
    operation_id="run_detail",
)
def run_detail(request, run_id: UUID):
    run = Run.objects.select_related("form", "record").filter(pk=run_id).first()
    if run is None:
        raise ApiError(404, "run_not_found", f"No run has the id {run_id}.")
    return {
        "id": run.pk,
        "reference": run.reference,
        "form": run.form.slug,
        "record": run.record.token,
        "event": run.event,
        "status": run.status,
        "subtext": run.subtext,
        "error": run.error,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "tasks": [task_out(task) for task in run.tasks.all()],
    }


@api.get(
    "/records/{token}",
    auth=key_only,
    response={200: RecordOut, **ERRORS},
    summary="Look up a record, its flags and runs",
    operation_id="record_detail",
)
def record_detail(request, token: str):
    record = None
    if TOKEN_PATTERN.fullmatch(token):
        record = record_model().objects.select_related("form").filter(token=token).first()
    if record is None:
        raise ApiError(404, "record_not_found", "No record has this token.")
    return {
        "token": record.token,
        "form": record.form.slug,
        "data": record.data,
        "flags": record.flags,
        "is_complete": record.is_complete,
        "created_at": record.created_at,
        "runs": [
            {
                "id": run.pk,
                "reference": run.reference,
                "event": run.event,
                "status": run.status,
                "subtext": run.subtext,
                "created_at": run.created_at,
                "finished_at": run.finished_at,
            }
            for run in record.runs.order_by("created_at")
        ],
    }


# Errors ---------------------------------------------------------------------------------


def error_response(request, status, code, message, details=None):
    return api.create_response(
        request, {"error": {"code": code, "message": message, "details": details}}, status=status
    )


@api.exception_handler(ApiError)
def on_api_error(request, exc):
    response = error_response(request, exc.status, exc.code, exc.message, exc.details)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(AuthenticationError)
def on_authentication_error(request, exc):
    AUTH_FAILURES.count(request)
    return error_response(
        request, 401, "unauthorized", "Missing or invalid credentials: send Authorization: Bearer <key> or X-Api-Key."
    )


@api.exception_handler(ValidationError)
def on_validation_error(request, exc):
    if exc.errors and all(tuple(error.get("loc") or ())[:1] == ("path",) for error in exc.errors):
        # A malformed id (or a NUL byte) in the path names nothing: not found, like an unknown id.
        return error_response(request, 404, "not_found", "Nothing has this id.")
    details = [
        {
            "loc": [str(part) for part in error.get("loc", [])],
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in exc.errors
    ]
    return error_response(request, 422, "invalid_request", "The request does not match the schema.", details)


@api.exception_handler(HttpError)
def on_http_error(request, exc):
    if exc.status_code == 400 and isinstance(exc.__cause__, NonFiniteNumber):
        number = str(exc.__cause__)[:40]
        return error_response(
            request,
            400,
            "malformed_json",
            f"The request body is not valid JSON: {number} is not a finite number "
            "(NaN, Infinity and numbers beyond ±1.8e308 are refused).",
            {"number": number},
        )
    if exc.status_code == 400:
        return error_response(request, 400, "malformed_json", "The request body is not valid JSON.")
    return error_response(request, exc.status_code, "http_error", str(exc))


@api.exception_handler(Http404)
def on_not_found(request, exc):
    return error_response(request, 404, "not_found", "Not found.")


def on_database_unavailable(request, exc):
    """The database is unreachable (restarting, say): 503 with Retry-After, so callers try again."""
    logger.warning("API %s %s: the database is unreachable: %s", request.method, request.path, exc)
    seconds = settings.EVENTS_UNAVAILABLE_RETRY_AFTER_SECONDS
    response = error_response(
        request,
        503,
        "database_unavailable",
        f"The database is unreachable just now; send the request again in {seconds} s "
        "(a repeat of a callback that was applied changes nothing).",
        {"retry_after": seconds},
    )
    response["Retry-After"] = str(seconds)
    return response


for _error in DATABASE_UNAVAILABLE:
    api.add_exception_handler(_error, on_database_unavailable)
