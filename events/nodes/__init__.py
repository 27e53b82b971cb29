"""Node types. Each module registers one type; this list imports them all, in order."""

from . import (  # noqa: F401
    background,
    condition,
    delay,
    fail,
    go_async,
    http_request,
    pause,
    send_email,
    set_flag,
    set_subtext,
    trigger_event,
    update_field,
)
from . import registry  # noqa: F401
