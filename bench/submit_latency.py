"""Submit latency: an empty tree against a tree with five 2-second background children.

Prints median and p95 per variant and their ratio, measured side by side in one
run (interleaved), against a throw-away SQLite database. The target (DESIGN.md 13)
is a ratio within 1.2: background work must not slow the submit.

    .venv/bin/python bench/submit_latency.py [--submits 200]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--submits", type=int, default=200)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-submit-")
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="1",
        DATABASE_URL=f"sqlite:///{workdir}/bench.sqlite3",
        EVENTS_LOG_LEVEL="WARNING",
    )
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from events.models import Node
    from forms_app.models import Field, Form

    call_command("migrate", verbosity=0)
    forms = {}
    for slug, children in (("empty", 0), ("five-background", 5)):
        form = Form.objects.create(slug=slug, title=slug)
        Field.objects.create(form=form, name="email", label="Email", type="email", required=True)
        Field.objects.create(form=form, name="status", label="Status", type="hidden")
        if children:
            background = Node.objects.add_root(instance=Node(form=form, type="background"))
            for _ in range(children):
                Node.objects.add_child(background, instance=Node(form=form, type="pause", config={"seconds": 2}))
        forms[slug] = form

    client = Client(HTTP_HOST="127.0.0.1")
    timings = {slug: [] for slug in forms}
    for i in range(args.submits):
        for slug in forms:
            started = time.perf_counter()
            response = client.post(f"/f/{slug}/", {"email": f"user{i}@example.com"})
            timings[slug].append(time.perf_counter() - started)
            assert response.status_code == 303, response.status_code

    def p95(values):
        return sorted(values)[int(len(values) * 0.95) - 1]

    for slug, values in timings.items():
        print(f"{slug:>16}: median {statistics.median(values) * 1000:6.2f} ms   p95 {p95(values) * 1000:6.2f} ms   n={len(values)}")
    ratio = statistics.median(timings["five-background"]) / statistics.median(timings["empty"])
    print(f"ratio five-background / empty (median): {ratio:.2f}  (target: at most 1.2)")


if __name__ == "__main__":
    main()
