"""Canned answers: what a test run answers in place of the systems a tree calls.

A document maps a node (its ``name``, or its id as text) to its answers::

    {
        "crm": {"status": 201, "json": {"id": 7}},
        "flaky": {"responses": [{"status": 503}, {"error": "connection refused"}, {"status": 200}]},
        "book": {"json": {"job": "j-1"}, "callback": {"status": "SUCCESS", "output": {"seat": "14C"}}},
        "check": {"callback": {"status": "FAILURE", "subtext": "No seats left"}},
    }

- ``status`` and ``json``: the HTTP response to every attempt of the node's request (default
  ``200`` and ``{}``); ``responses``: one per attempt instead (the last one answers any further
  attempt); a response with ``error`` fails the request without an answer, as a refused
  connection or a timeout does (the step's retries apply).
- ``callback``: how a step that waits for a callback is answered: ``SUCCESS`` (default; its
  ``output`` is merged over the step's output), ``FAILURE`` (the step fails as if the external
  system reported it; ``subtext`` is its progress text) or ``TIMEOUT`` (no callback: the step
  fails at its deadline). A callback answers at once, at the time the request was made.

A node without an entry gets the defaults: 200 ``{}``, and a SUCCESS callback with ``{}``.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from ..storable import storage_problem

CALLBACK_STATUSES = ("SUCCESS", "FAILURE", "TIMEOUT")
RESPONSE_KEYS = {"status", "json", "error"}
ENTRY_KEYS = RESPONSE_KEYS | {"responses", "callback"}
CALLBACK_KEYS = {"status", "output", "subtext"}


class CannedError(ValueError):
    """A canned-answers document with problems: ``problems`` is a list of (JSON path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" if path else message for path, message in problems))


@dataclass(frozen=True)
class Response:
    """One canned HTTP response: a status and a JSON body, or an ``error`` (no answer at all)."""

    status: int = 200
    json: Any = field(default_factory=dict)
    error: str = ""

    def as_document(self) -> dict[str, Any]:
        return {"error": self.error} if self.error else {"status": self.status, "json": self.json}


@dataclass(frozen=True)
class Callback:
    """A canned callback: SUCCESS with an output, FAILURE, or TIMEOUT (none arrives)."""

    status: str = "SUCCESS"
    output: dict[str, Any] = field(default_factory=dict)
    subtext: str | None = None

    def as_document(self) -> dict[str, Any]:
        document = {"status": self.status, "output": self.output}
        if self.subtext is not None:
            document["subtext"] = self.subtext
        return document


@dataclass(frozen=True)
class Canned:
    """What a test run answers for one node."""

    responses: tuple[Response, ...] = (Response(),)
    callback: Callback = field(default_factory=Callback)

    def response(self, attempt: int) -> Response:
        """The response to ``attempt`` (1, 2, …): its own, or the last one given."""
        return self.responses[min(max(attempt, 1), len(self.responses)) - 1]

    def as_document(self) -> dict[str, Any]:
        document = {"callback": self.callback.as_document()}
        if len(self.responses) == 1:
            document.update(self.responses[0].as_document())
        else:
            document["responses"] = [response.as_document() for response in self.responses]
        return document


DEFAULT = Canned()


def canned_parse(document: Any) -> dict[str, Canned]:
    """A canned-answers document (a dict, or its JSON text) as {node name or id: Canned}.

    Raises CannedError listing every problem with its path.
    """
    if isinstance(document, (str, bytes)):
        try:
            document = json.loads(document or "{}")
        except ValueError as exc:
            raise CannedError([("", f"not JSON: {exc}")]) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise CannedError([("", "give the canned answers as a JSON object: {node name: {...}}")])
    problems, canned = [], {}
    for key, entry in document.items():
        path = str(key)
        if not isinstance(entry, dict):
            problems.append((path, "give a node's answers as an object: {status, json, responses, callback}"))
            continue
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            problems.append((path, f"unknown keys {', '.join(unknown)} (known: {', '.join(sorted(ENTRY_KEYS))})"))
        if "responses" in entry and set(entry) & RESPONSE_KEYS:
            problems.append((path, "give either responses or status/json/error, not both"))
        if "responses" in entry:
            raw = entry["responses"]
            if not isinstance(raw, list) or not raw:
                problems.append((f"{path}.responses", "give a list of one response or more"))
                responses = (Response(),)
            else:
                responses = tuple(
                    _response(item, f"{path}.responses[{index}]", problems) for index, item in enumerate(raw)
                )
        else:
            responses = (_response({k: v for k, v in entry.items() if k in RESPONSE_KEYS}, path, problems),)
        callback = _callback(entry.get("callback", {}), f"{path}.callback", problems)
        canned[path] = Canned(responses=responses, callback=callback)
    if not problems:
        problem = storage_problem(document, "canned answers")
        if problem:  # NaN, Infinity or NUL: a step's output could not be stored
            problems.append(("", problem))
    if problems:
        raise CannedError(problems)
    return canned


def _response(item: Any, path: str, problems: list[tuple[str, str]]) -> Response:
    if not isinstance(item, dict):
        problems.append((path, "give a response as an object: {status, json} or {error}"))
        return Response()
    unknown = sorted(set(item) - RESPONSE_KEYS)
    if unknown:
        problems.append((path, f"unknown keys {', '.join(unknown)} (known: error, json, status)"))
    status = item.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        problems.append((f"{path}.status", "give an HTTP status, a whole number from 100 to 599"))
        status = 200
    error = item.get("error", "")
    if not isinstance(error, str):
        problems.append((f"{path}.error", "give the error as text"))
        error = ""
    if error and ("status" in item or "json" in item):
        problems.append((path, "a response with an error has no status or json: it was never answered"))
    return Response(status=status, json=item.get("json", {}), error=error)


def _callback(item: Any, path: str, problems: list[tuple[str, str]]) -> Callback:
    if not isinstance(item, dict):
        problems.append((path, "give the callback as an object: {status, output, subtext}"))
        return Callback()
    unknown = sorted(set(item) - CALLBACK_KEYS)
    if unknown:
        problems.append((path, f"unknown keys {', '.join(unknown)} (known: output, status, subtext)"))
    status = str(item.get("status", "SUCCESS")).upper()
    if status not in CALLBACK_STATUSES:
        problems.append((f"{path}.status", f"give one of {', '.join(CALLBACK_STATUSES)}"))
        status = "SUCCESS"
    output = item.get("output", {})
    if not isinstance(output, dict):
        problems.append((f"{path}.output", "give the output as a JSON object"))
        output = {}
    subtext = item.get("subtext")
    if subtext is not None and not isinstance(subtext, str):
        problems.append((f"{path}.subtext", "give the subtext as text"))
        subtext = None
    return Callback(status=status, output=output, subtext=subtext)
