from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events"

    def ready(self):
        from . import checks, nodes  # noqa: F401  registers the checks; fills the node-type registry
