from django.conf import settings
from django.core.checks import Warning, register


@register()
def lease_covers_job_timeout(app_configs, **kwargs):
    """A lease shorter than the job timeout lets the sweep re-run a step that is still running."""
    if settings.EVENTS_TASK_LEASE_SECONDS < settings.EVENTS_JOB_TIMEOUT:
        return [
            Warning(
                f"EVENTS_TASK_LEASE_SECONDS ({settings.EVENTS_TASK_LEASE_SECONDS}) is shorter than "
                f"EVENTS_JOB_TIMEOUT ({settings.EVENTS_JOB_TIMEOUT}).",
                hint="A step that runs longer than its lease is taken for lost and run again in parallel. "
                "Keep the lease at least as long as the job timeout (the default).",
                id="events.W001",
            )
        ]
    return []
