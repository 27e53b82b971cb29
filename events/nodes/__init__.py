"""Node types. Each module registers one type; this list imports them all, in order (and the registry)."""

from . import (  # noqa: F401
    background,
    condition,
    delay,
    fail,
    go_async,
    http_request,
    pause,
    registry,
    send_email,
    set_flag,
    set_subtext,
    trigger_event,
    update_field,
)
