"""What every database we run on can store in a task's text and JSON columns, and log lines.

Imports nothing of ours: node types use it too, and the models import the node types.
"""

import math

from . import effects

SUBTEXT_MAX_LENGTH = 500  # a run's or a task's progress text (the waiting page shows it); longer text is cut


def log_line(line, at=None):
    """One line of a task's log: the text (made storable) and when it was written."""
    return {"at": (at or effects.now()).isoformat(timespec="milliseconds"), "line": storable_text(line)}


def storable_text(text):
    """``text`` as every database we run on can store it: NUL and unpaired surrogates become U+FFFD.

    For what the engine writes itself (error messages, log lines), which may quote anything a
    step met; what comes from outside is refused at the API instead.
    """
    text = str(text)
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def storage_problem(value, path="value"):
    """Why ``value`` cannot go into a task's JSON fields on every database we run on, or None.

    PostgreSQL refuses NUL characters and unpaired surrogates in text, and both PostgreSQL
    and SQLite's JSON check refuse NaN and ±Infinity (``1e999`` parses as Infinity).
    """
    pending = [(path, value)]
    while pending:  # no recursion: an answer may nest deeper than Python's stack allows
        where, item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return f"{where} contains a NUL character"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{where} contains an unpaired surrogate"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{where} is not a finite number"
        elif isinstance(item, dict):
            for key, element in item.items():
                pending.append((f"{where} (a key)", key))
                pending.append((f"{where}.{key}", element))
        elif isinstance(item, (list, tuple)):
            pending.extend((f"{where}[{index}]", element) for index, element in enumerate(item))
    return None
