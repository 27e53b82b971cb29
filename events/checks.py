from django.conf import settings
from django.core.checks import Warning, register

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
