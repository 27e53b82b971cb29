from django.conf import settings
from django.core.checks import Error, Warning, register

SHORTEST_SAFE_LEASE = 15


@register()
def lease_is_long_enough(app_configs, **kwargs):
    """A lease renewed every third of its length needs room for a slow database between renewals."""
    if settings.EVENTS_TASK_LEASE_SECONDS < SHORTEST_SAFE_LEASE:
        return [
            Warning(
                f"EVENTS_TASK_LEASE_SECONDS ({settings.EVENTS_TASK_LEASE_SECONDS}) is shorter than "
                f"{SHORTEST_SAFE_LEASE} seconds.",
                hint="Workers renew the leases of running steps every third of a lease; with a very short lease "
                "a slow database can let one run out, and the sweep then runs the step again in parallel.",
                id="events.W001",
            )
        ]
    return []


@register()
def inline_steps_end_within_the_web_timeout(app_configs, **kwargs):
    """A step in the submit request waits at most EVENTS_INLINE_STEP_MAX_SECONDS for any one thing.

    An HTTP step waits up to three times in turn (connecting, the first byte, the last bytes), each
    at most the cap: three caps must fit in the web server's timeout, or it kills the request.
    """
    cap, timeout = settings.EVENTS_INLINE_STEP_MAX_SECONDS, settings.EVENTS_WEB_TIMEOUT_SECONDS
    if cap <= 0 or 3 * cap > timeout:
        return [
            Error(
                f"EVENTS_INLINE_STEP_MAX_SECONDS ({cap:g}) must be above 0 and at most a third of "
                f"EVENTS_WEB_TIMEOUT_SECONDS ({timeout}).",
                hint="A step run in the submit request could outlast the web server's timeout (gunicorn --timeout, "
                "which the Procfile and deploy/events-web.service read from EVENTS_WEB_TIMEOUT_SECONDS). Lower "
                "the cap, or raise the timeout for both.",
                id="events.E001",
            )
        ]
    return []
