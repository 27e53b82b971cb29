"""A stand-in external service, so that the demo shows a step that waits for a callback.

It plays the part of an external system (a seat-reservation service): an
``http_request`` node with ``wait_for_callback`` POSTs its default body
``{"taskId", "callbackUrl", "callbackToken"}`` to ``/demo/external-service/``;
the view answers 202 at once and hands the work to a queued job
(``standin_job`` below, sent with ``events.queue.job_send``). The job then talks
to this app over HTTP, like a real external system would: two progress updates through
``PUT /api/event-workflow-tasks/<taskId>``, then the SUCCESS callback to the
``callbackUrl``, each a few seconds apart, each authenticated with the task's
callback token as ``Authorization: Bearer <token>``.

It is for development and demos only: the ``demo`` app is installed, and its
URLs included, only when ``EVENTS_DEMO_SERVICE`` is true (default: ``DEBUG``),
and the views answer 404 whenever the setting is off. It only ever calls back
into this app: a ``callbackUrl`` outside ``EVENTS_PUBLIC_URL`` is refused.
"""

import json
import logging
import time

from django.conf import settings
from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from events import queue

SEAT = "14C"
PROGRESS_PATH = "/api/event-workflow-tasks/{task_id}"
DEFAULT_STEP_SECONDS = 1.5
REQUEST_TIMEOUT = (10.0, 5.0)  # read, connect (seconds)
ATTEMPTS = 3
RETRY_PAUSE_SECONDS = 0.5
PROGRESS = ["Checking seat availability…", f"Holding seat {SEAT}…"]

logger = logging.getLogger("demo.standin")


class StandInRequestError(Exception):
    """The request is not what a waiting http_request sends."""


def standin_enabled():
    return bool(getattr(settings, "EVENTS_DEMO_SERVICE", settings.DEBUG))


def public_base_url():
    return settings.EVENTS_PUBLIC_URL.rstrip("/")


@csrf_exempt
def external_service(request):
    """POST {"taskId", "callbackUrl", "callbackToken"}: 202 now, progress and callback later, from a job."""
    if not standin_enabled():
        raise Http404("The demo service is off.")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        work = standin_request_parse(request.body)
    except StandInRequestError as exc:
        return JsonResponse({"error": {"code": "invalid_request", "message": str(exc), "details": None}}, status=400)
    step_seconds = float(getattr(settings, "EVENTS_DEMO_SERVICE_STEP_SECONDS", DEFAULT_STEP_SECONDS))
    # The job carries the task's callback token: the stand-in plays an external system, which holds it too.
    queue.job_send(
        "demo.standin.standin_job",
        work["task_id"],
        work["callback_url"],
        work["callback_token"],
        work["progress_url"],
        step_seconds,
        name=f"standin-{work['task_id']}",
    )
    return JsonResponse(
        {
            "taskId": work["task_id"],
            "accepted": True,
            "message": "Checking seat availability; progress and the answer follow.",
        },
        status=202,
    )


@csrf_exempt
def loyalty_service(request):
    """A stand-in loyalty programme that is always down (503): the demo's step that fails, caught by
    its error branch."""
    if not standin_enabled():
        raise Http404("The demo service is off.")
    return JsonResponse({"error": "The loyalty programme is under maintenance."}, status=503)


def standin_request_parse(body):
    """The job's arguments from a request body, or StandInRequestError saying what is wrong."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise StandInRequestError("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise StandInRequestError("The request body must be a JSON object.")
    missing = [
        key
        for key in ("taskId", "callbackUrl", "callbackToken")
        if not isinstance(payload.get(key), str) or not payload[key].strip()
    ]
    if missing:
        raise StandInRequestError(f"Missing or empty: {', '.join(missing)} (strings are expected).")
    task_id, callback_url = payload["taskId"].strip(), payload["callbackUrl"].strip()
    if len(task_id) > 100 or "/" in task_id:
        raise StandInRequestError("taskId is not a task id.")
    base = public_base_url()
    # Only ever call back into this app, whatever the request says.
    if not callback_url.startswith(base + "/"):
        raise StandInRequestError(f"callbackUrl must be on this app's public URL ({base}/...).")
    return {
        "task_id": task_id,
        "callback_url": callback_url,
        "callback_token": payload["callbackToken"],
        "progress_url": base + PROGRESS_PATH.format(task_id=task_id),
    }


def standin_job(task_id, callback_url, callback_token, progress_url, step_seconds):
    """Queue entry point: the external system answering one request (see ``standin_reply``)."""
    return standin_reply(
        task_id=task_id,
        callback_url=callback_url,
        callback_token=callback_token,
        progress_url=progress_url,
        step_seconds=step_seconds,
    )


def standin_reply(*, task_id, callback_url, callback_token, progress_url, step_seconds=DEFAULT_STEP_SECONDS):
    """What the external system does for one request: two progress updates, then the callback.

    Waits ``step_seconds`` before each of the three calls. Stops early (and
    says why) when the app refuses a progress update with a 4xx, e.g. because the
    task no longer awaits. Returns a short account of what happened.
    """
    import httpx

    headers = {"Authorization": f"Bearer {callback_token}"}
    with httpx.Client(
        timeout=httpx.Timeout(REQUEST_TIMEOUT[0], connect=REQUEST_TIMEOUT[1]), follow_redirects=False, headers=headers
    ) as client:
        for subtext in PROGRESS:
            time.sleep(step_seconds)
            response = _send(client, "PUT", progress_url, {"subtext": subtext})
            if 400 <= response.status_code < 500:
                # Unknown task, bad token, or the task no longer waits: nobody needs the answer.
                logger.warning(
                    "Stand-in: progress for task %s refused (%s): %s; stopping",
                    task_id,
                    response.status_code,
                    response.text[:200],
                )
                return f"stopped: progress refused with {response.status_code}"
        time.sleep(step_seconds)
        response = _send(
            client,
            "POST",
            callback_url,
            {
                "taskId": task_id,
                "status": "SUCCESS",
                "logs": ["Seat map checked: 3 window seats free", f"Seat {SEAT} held for 15 minutes"],
                "output": {"seat": SEAT, "hold_minutes": 15},
                "subtext": f"Seat {SEAT} held",
            },
        )
    if response.status_code >= 400:
        logger.warning(
            "Stand-in: callback for task %s refused (%s): %s", task_id, response.status_code, response.text[:200]
        )
        return f"callback refused with {response.status_code}"
    logger.info("Stand-in: called back task %s", task_id)
    return f"called back: {response.status_code}"


def _send(client, method, url, payload):
    """One request, tried up to ATTEMPTS times on connection errors (the API ignores duplicates)."""
    import httpx

    for attempt in range(1, ATTEMPTS + 1):
        try:
            return client.request(method, url, json=payload)
        except httpx.TransportError as exc:
            if attempt == ATTEMPTS:
                raise
            logger.warning("Stand-in: %s %s failed (%s); trying again", method, url, exc)
            time.sleep(RETRY_PAUSE_SECONDS * attempt)
