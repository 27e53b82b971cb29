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


@register()
def short_test_runs(app_configs, **kwargs):
    """A test run holds one transaction (on SQLite, the write lock): real submits wait until it ends.

    They wait at most the database's busy timeout (SQLite's ``timeout`` option) before failing, so
    a test run must end well within it.
    """
    from django.db import connections

    cap = settings.EVENTS_TEST_RUN_MAX_SECONDS
    database = connections["default"]
    if database.vendor != "sqlite":
        return [] if cap > 0 else [_test_run_cap_error(cap, "above 0")]
    waits = float(database.settings_dict.get("OPTIONS", {}).get("timeout", 5))
    if cap <= 0 or cap > waits / 2:
        return [_test_run_cap_error(cap, f"above 0 and at most half of SQLite's busy timeout ({waits:g} s)")]
    return []


def _test_run_cap_error(cap, rule):
    return Error(
        f"EVENTS_TEST_RUN_MAX_SECONDS ({cap:g}) must be {rule}.",
        hint="A test run holds the database's write lock while it runs; a submit waiting longer than the "
        "busy timeout fails. Lower the cap.",
        id="events.E002",
    )
