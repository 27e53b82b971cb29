"""The bench's in-process helper for the reference app (see bench/helper_protocol.py).

Run from bench/reference with the reference's environment (REF_SECRET_KEY, REF_DATABASE_URL).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for helper_protocol only
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "refsite.settings")

import django  # noqa: E402

django.setup()

from django.db import close_old_connections, connection, transaction  # noqa: E402
from django_q.models import OrmQ  # noqa: E402
from django_q.tasks import async_task  # noqa: E402
from entries.models import Entry  # noqa: E402
from helper_protocol import drain_watch, serve  # noqa: E402


def entry_create():
    """One row for the one-row read."""
    return Entry.objects.create(name="Ada", email="ada@example.com", age=36, city="London", comment="").pk


def queue_fill(n):
    """``n`` no-op jobs in django-q2's broker, through ``async_task``, in one transaction."""
    with transaction.atomic():
        for _ in range(n):
            async_task("entries.jobs.noop")
    return OrmQ.objects.count()


def queue_clear():
    return OrmQ.objects.all().delete()[0]


def queue_size():
    return OrmQ.objects.count()


def drain(start_count, window, first_wait):
    return drain_watch(queue_size, start_count=start_count, window=window, first_wait=first_wait)


def stats():
    return {"entries": Entry.objects.count(), "queued": OrmQ.objects.count()}


if __name__ == "__main__":
    serve(
        {
            "entry_create": entry_create,
            "queue_fill": queue_fill,
            "queue_clear": queue_clear,
            "queue_size": queue_size,
            "drain": drain,
            "stats": stats,
        },
        after_each=lambda: (close_old_connections(), connection.close()),
    )
