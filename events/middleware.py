"""The HTTP edge of the API: what a request to /api/ goes through before and after its view.

- ``ChunkedBodies`` (WSGI, wrapped around the application in config/wsgi.py) reads a body sent
  without a Content-Length (``Transfer-Encoding: chunked``), bounded.
- ``ApiPathMiddleware`` accepts both spellings of every API path, and answers an unknown path and
  every error in the API's JSON shape, ``{"error": {"code", "message", "details"}}``.
- ``ApiBodyLimitMiddleware`` refuses a body over EVENTS_API_MAX_BODY_BYTES (413).
- ``DATABASE_UNAVAILABLE``: the errors that mean the database cannot be reached just now
  (a 503 that says to try again, not a 500).
"""

import io
import json
from http import HTTPStatus

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from django.urls import Resolver404, resolve

DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Django wraps the driver's errors, but one raised outside its wrappers is the same outage.
    # (Only then: psycopg costs a SQLite-only web worker ~24 MB.)
    import psycopg

    DATABASE_UNAVAILABLE += (psycopg.OperationalError, psycopg.InterfaceError)

API_PREFIX = "/api/"
MESSAGES = {
    404: ("not_found", "No API endpoint has this path."),
    405: ("method_not_allowed", "This method is not allowed on this path."),
    500: ("internal_error", "Something went wrong on the server; it has been logged."),
}


def error_body(code, message, details=None):
    return {"error": {"code": code, "message": message, "details": details}}


def error_json(status, code, message, details=None):
    return JsonResponse(error_body(code, message, details), status=status)


def payload_too_large():
    limit = settings.EVENTS_API_MAX_BODY_BYTES
    return error_body("payload_too_large", f"The request body is over {limit} bytes.", {"limit": limit})


class ChunkedBodies:
    """WSGI: read an API request body sent without Content-Length, at most EVENTS_API_MAX_BODY_BYTES.

    Django reads exactly CONTENT_LENGTH bytes and ignores ``wsgi.input_terminated``, which
    gunicorn sets for a chunked body: such a body would read as empty ("Field required").
    Here it is read to its end (the server ends the stream) and handed on with its length;
    one over the limit is answered 413 in the API's error shape without reading the rest.
    """

    def __init__(self, application):
        self.application = application

    def __call__(self, environ, start_response):
        if (
            environ.get("PATH_INFO", "").startswith(API_PREFIX)
            and not environ.get("CONTENT_LENGTH")
            and environ.get("wsgi.input_terminated")
            and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            limit = settings.EVENTS_API_MAX_BODY_BYTES
            body = self.read_at_most(environ["wsgi.input"], limit + 1)
            if len(body) > limit:
                answer = json.dumps(payload_too_large()).encode()
                start_response(
                    f"413 {HTTPStatus(413).phrase}",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))],
                )
                return [answer]
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.application(environ, start_response)

    @staticmethod
    def read_at_most(stream, size):
        chunks, read = [], 0
        while read < size:
            chunk = stream.read(min(64 * 1024, size - read))
            if not chunk:
                break
            chunks.append(chunk)
            read += len(chunk)
        return b"".join(chunks)


class ApiPathMiddleware:
    """Both spellings of every API path; an unknown path and every error in the API's JSON shape.

    ``/api/external-events/callback`` reaches the same view as ``.../callback/``, and
    ``/api/event-workflow-tasks/<id>/`` the same as ``.../<id>``, instead of a redirect that
    would drop the body (or Django's APPEND_SLASH error page with DEBUG on). The documented
    spellings (DESIGN §11) stay the only ones in the OpenAPI document. An error answered
    outside the API's own handlers (a 404 for an unknown path, a 405, Django's 500 page) is
    replaced by the JSON shape with the same status. Goes before CommonMiddleware.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        if not self.resolves(request, request.path_info):
            path = request.path_info
            other = path[:-1] if path.endswith("/") else path + "/"
            if not self.resolves(request, other):
                return error_json(404, *MESSAGES[404])
            request.path = request.path.removesuffix(path) + other
            request.path_info = other
        response = self.get_response(request)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith("application/json"):
            response = self.as_json(response)
        return response

    @staticmethod
    def resolves(request, path):
        try:
            resolve(path, getattr(request, "urlconf", None))
        except Resolver404:
            return False
        return True

    @staticmethod
    def as_json(response):
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        status = response.status_code
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        code, message = MESSAGES.get(status, (phrase.lower().replace(" ", "_").replace("-", "_"), f"{phrase}."))
        replaced = error_json(status, code, message)
        for header in ("Allow", "Retry-After"):
            if header in response:
                replaced[header] = response[header]
        return replaced


class ApiBodyLimitMiddleware:
    """Refuse API request bodies over EVENTS_API_MAX_BODY_BYTES with a 413 in the API's error shape."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith(API_PREFIX) and self.too_large(request):
            return JsonResponse(payload_too_large(), status=413)
        return self.get_response(request)

    def too_large(self, request):
        limit = settings.EVENTS_API_MAX_BODY_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length:
            return length > limit
        if request.method in ("POST", "PUT", "PATCH"):
            # No length given (chunked): read it, within Django's own cap.
            try:
                return len(request.body) > limit
            except RequestDataTooBig:
                return True
        return False
