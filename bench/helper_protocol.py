"""What the bench's in-process helpers share: a request/answer loop and the drain watch.

A helper is a long-lived process with Django set up for one app (ours or the reference) on one
database. The driver (``bench/run.py``) writes one JSON object per line to its stdin,
``{"cmd": name, ...arguments}``, and reads one JSON line back: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": ...}``. Anything else the helper prints goes to stderr.
"""

import json
import sys
import time
import traceback


def serve(commands, *, after_each=None):
    answers = sys.stdout
    sys.stdout = sys.stderr  # answers only on the real stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        name = request.pop("cmd")
        try:
            answer = {"ok": True, "result": commands[name](**request)}
        except Exception as exc:  # reported to the driver, which records it with the figure
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        finally:
            if after_each is not None:
                after_each()
        answers.write(json.dumps(answer, default=str) + "\n")
        answers.flush()


def drain_watch(remaining, *, start_count, window, first_wait, poll=0.025):
    """Watch a queue drain: ``remaining()`` is polled until it first drops below ``start_count`` (the
    worker started), then for up to ``window`` seconds or until it reaches zero.

    Returns the rate over that span: items done from the first drop seen to the end, per second.
    The worker's start-up is left out; the polling granularity is ``poll`` seconds.
    """
    give_up = time.monotonic() + first_wait
    while True:
        count, now = remaining(), time.monotonic()
        if count < start_count:
            started_at, count_at_start = now, count
            break
        if now > give_up:
            return {"error": f"nothing was drained within {first_wait} s of the start", "start_count": start_count}
        time.sleep(poll)
    end = started_at + window
    while count > 0 and now < end:
        time.sleep(poll)
        count, now = remaining(), time.monotonic()
    seconds = now - started_at
    done = count_at_start - count
    return {
        "rate": done / seconds if seconds > 0 else None,
        "done": done,
        "seconds": round(seconds, 3),
        "left": count,
        "start_count": start_count,
        "emptied": count == 0,
    }
