"""The bench's in-process helper for our app (see bench/helper_protocol.py).

Runs with our settings (``config.settings``) and the same environment as the gunicorn and worker
under test. It prepares data through our real entry points where it can (``import_form``,
``create_api_key``, a submit through the full WSGI stack, the queue's own jobs run as a django-q2
worker would run them), copies real rows in bulk where it must (history, awaiting tasks), and
takes the in-process measurements (query counts, one sweep pass, delay lateness, drain progress).
"""

import http.server
import io
import os
import statistics
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command, color  # noqa: E402
from django.db import close_old_connections, connection, transaction  # noqa: E402
from django.db.models import UniqueConstraint  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402
from django_q.models import OrmQ  # noqa: E402
from django_q.signing import SignedPackage  # noqa: E402
from helper_protocol import drain_watch, serve  # noqa: E402

from events.models import Run, RunTask  # noqa: E402
from forms_app.models import Record  # noqa: E402

PENDING, ACTIVE, AWAITING = RunTask.Status.PENDING, RunTask.Status.ACTIVE, RunTask.Status.AWAITING
# What figure 5 counts: bench-submit's background branches, one quick step each. (Not the steps: a
# branch's step gets its row when a worker starts the branch, so the branch is what is open until done.)
DRAIN_STEP_TYPE = "background"


# --- Set-up through our entry points -------------------------------------------------------------


def forms_import(files):
    out = io.StringIO()
    for path in files:
        call_command("import_form", path, "--publish", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def api_key_create(name):
    out = io.StringIO()
    call_command("create_api_key", name, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip().splitlines()[-1]


def submit(slug, data, n=1):
    """Submit a form ``n`` times through the whole WSGI stack (CSRF aside); the records' tokens."""
    client = Client(HTTP_HOST="127.0.0.1")
    tokens = []
    for _ in range(n):
        response = client.post(f"/f/{slug}/", data)
        if response.status_code != 303:
            raise RuntimeError(f"submit to {slug} answered {response.status_code}, not 303")
        tokens.append(response["Location"].rstrip("/").rsplit("/", 1)[-1])
    return tokens


def stub_start(port):
    """A stand-in external system on 127.0.0.1:``port`` that accepts every request (202)."""

    class Accept(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_POST

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Accept)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return port


def _job_task_id(payload):
    """The task id a queue job carries (jobs carry ids only), or None."""
    try:
        package = SignedPackage.loads(payload)
        return uuid.UUID(str(package["args"][0])), package
    except Exception:
        return None, None


def jobs_run(token, limit=50):
    """Run the queued jobs of a record's runs here, as a django-q2 worker would, until none is left."""
    ran = 0
    for _ in range(limit):
        task_ids = set(RunTask.objects.filter(run__record__token=token).values_list("pk", flat=True))
        found = False
        for row in OrmQ.objects.all():
            task_id, package = _job_task_id(row.payload)
            if task_id in task_ids:
                OrmQ.objects.filter(pk=row.pk).delete()
                import_string(package["func"])(*package["args"], **package.get("kwargs", {}))
                ran += 1
                found = True
        if not found:
            return ran
    raise RuntimeError(f"the jobs of record {token} did not settle after {limit} rounds")


# --- Copies of real rows, in bulk ---------------------------------------------------------------


class Copier:
    """INSERTs for copies of one model's rows: the template's database values, computed once, with new
    primary keys, foreign keys to other copied rows remapped, unique values with a default drawn
    afresh, and chosen columns set."""

    def __init__(self, model, copied_models):
        self.model = model
        self.fields = [f for f in model._meta.concrete_fields if not getattr(f, "generated", False)]
        columns = ", ".join(connection.ops.quote_name(f.column) for f in self.fields)
        marks = ", ".join(["%s"] * len(self.fields))
        self.sql = f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({columns}) VALUES ({marks})"
        self.remapped = {i: f for i, f in enumerate(self.fields) if f.is_relation and f.related_model in copied_models}
        unique = {f.name for f in self.fields if f.unique} | {
            c.fields[0] for c in model._meta.constraints if isinstance(c, UniqueConstraint) and len(c.fields) == 1
        }
        self.fresh = {
            i: f for i, f in enumerate(self.fields) if f.name in unique and not f.primary_key and callable(f.default)
        }
        self.pk_index = next(i for i, f in enumerate(self.fields) if f.primary_key)
        self.index = {f.name: i for i, f in enumerate(self.fields)}

    def prepared(self, obj):
        return [f.get_db_prep_save(f.value_from_object(obj), connection) for f in self.fields]

    def row(self, prepared, raw, new_pk, maps, overrides):
        values = list(prepared)
        values[self.pk_index] = self.fields[self.pk_index].get_db_prep_save(new_pk, connection)
        for i, field in self.remapped.items():
            if raw[i] is not None:
                values[i] = field.get_db_prep_save(maps[field.related_model].get(raw[i], raw[i]), connection)
        for i, field in self.fresh.items():
            values[i] = field.get_db_prep_save(field.default(), connection)
        for name, value in overrides.items():
            values[self.index[name]] = self.fields[self.index[name]].get_db_prep_save(value, connection)
        return values

    def templates(self, objects):
        """[(prepared values, raw values)] of ``objects``."""
        return [(self.prepared(obj), [f.value_from_object(obj) for f in self.fields]) for obj in objects]


def copies_create(token, n, backdate_seconds=0, batch=1000):
    """``n`` copies of a record with its runs and their tasks, as they are now, in bulk.

    With ``backdate_seconds``, the copies' ``created_at`` spread evenly over that many seconds
    before now (history). Returns how many rows were written and how long it took.
    """
    started = time.perf_counter()
    record = Record.objects.get(token=token)
    runs = list(Run.objects.filter(record=record))
    tasks = list(RunTask.objects.filter(run__in=runs))
    copied = (Record, Run, RunTask)
    plans = [(Copier(model, copied), objects) for model, objects in ((Record, [record]), (Run, runs), (RunTask, tasks))]
    for copier, objects in plans:
        copier.items = copier.templates(objects)
    next_record_id = (Record.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
    now = timezone.now()
    written = 0
    for first in range(0, n, batch):
        rows = {Record: [], Run: [], RunTask: []}
        for k in range(first, min(n, first + batch)):
            maps = {
                Record: {record.pk: next_record_id + k},
                Run: {run.pk: uuid.uuid4() for run in runs},
                RunTask: {task.pk: uuid.uuid4() for task in tasks},
            }
            created = now - timedelta(seconds=backdate_seconds * (1 - k / n)) if backdate_seconds else None
            for copier, objects in plans:
                overrides = {"created_at": created} if created is not None and "created_at" in copier.index else {}
                for (prepared, raw), obj in zip(copier.items, objects, strict=True):
                    rows[copier.model].append(copier.row(prepared, raw, maps[copier.model][obj.pk], maps, overrides))
        with transaction.atomic(), connection.cursor() as cursor:
            for copier, _ in plans:
                if rows[copier.model]:
                    cursor.executemany(copier.sql, rows[copier.model])
                    written += len(rows[copier.model])
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(color.no_style(), [Record]):  # PostgreSQL: ids go on
            cursor.execute(sql)
        if connection.vendor == "postgresql":
            # What autovacuum does after a bulk load, so that the planner knows the tables' sizes.
            cursor.execute("ANALYZE")
    return {"rows": written, "seconds": round(time.perf_counter() - started, 2)}


def record_delete(token):
    """Delete a record (its runs and tasks go with it) and the queue jobs of its tasks."""
    task_ids = set(RunTask.objects.filter(run__record__token=token).values_list("pk", flat=True))
    Record.objects.filter(token=token).delete()
    return _jobs_delete(lambda task_id: task_id in task_ids)


def awaiting_delete(slug):
    """Delete the records of a form whose steps still wait for a callback (an unused callback pool)."""
    records = Record.objects.filter(form__slug=slug, runs__tasks__status=AWAITING).distinct()
    return Record.objects.filter(pk__in=list(records.values_list("pk", flat=True))).delete()[0]


def _jobs_delete(doomed):
    gone = [row.pk for row in OrmQ.objects.all() if doomed(_job_task_id(row.payload)[0])]
    OrmQ.objects.filter(pk__in=gone).delete()
    return len(gone)


def runs_cancel(slugs=None):
    """Stop every running run (of the forms ``slugs``, or all) and take their jobs off the queue.

    For the bench's own database only: so that work queued by one measurement (say, the 2-second
    pauses of the latency figure) does not run during another.
    """
    runs = Run.objects.filter(status=Run.Status.RUNNING)
    if slugs:
        runs = runs.filter(form__slug__in=slugs)
    run_ids = list(runs.values_list("pk", flat=True))
    now = timezone.now()
    with transaction.atomic():
        RunTask.objects.filter(run_id__in=run_ids).exclude(status__in=RunTask.TERMINAL).update(
            status=RunTask.Status.CANCELLED, finished_at=now, lease_expires_at=None
        )
        Run.objects.filter(pk__in=run_ids).update(status=Run.Status.CANCELLED, finished_at=now)
    if slugs:
        open_tasks = set(RunTask.objects.exclude(status__in=RunTask.TERMINAL).values_list("pk", flat=True))
        jobs = _jobs_delete(lambda task_id: task_id is not None and task_id not in open_tasks)
    else:
        jobs = OrmQ.objects.all().delete()[0]
    return {"runs": len(run_ids), "jobs": jobs}


# --- Measurements --------------------------------------------------------------------------------


def awaiting_ids(slug):
    return [
        str(pk) for pk in RunTask.objects.filter(run__form__slug=slug, status=AWAITING).values_list("pk", flat=True)
    ]


def _drain_remaining():
    # Polled every 25 ms while the workers drain: by the status index alone, no join, so that the
    # watching costs little beside the work it watches (a join to the runs cost more with each round).
    return RunTask.objects.filter(type=DRAIN_STEP_TYPE, status__in=[PENDING, ACTIVE]).count()


def drain_size(slug):
    """The open branches to drain: all of them the form ``slug``'s (checked here, once)."""
    total = _drain_remaining()
    mine = RunTask.objects.filter(run__form__slug=slug, type=DRAIN_STEP_TYPE, status__in=[PENDING, ACTIVE]).count()
    if total != mine:
        raise RuntimeError(f"{total - mine} open {DRAIN_STEP_TYPE} steps belong to other forms than {slug}")
    return total


def drain(slug, start_count, window, first_wait):
    return drain_watch(_drain_remaining, start_count=start_count, window=window, first_wait=first_wait)


def lateness(slug):
    """Seconds from due to start of the delay containers of a form's runs, and how many have not started."""
    containers = RunTask.objects.filter(run__form__slug=slug, is_container=True, due_at__isnull=False)
    started = [
        (task.started_at - task.due_at).total_seconds()
        for task in containers.filter(started_at__isnull=False).only("started_at", "due_at")
    ]
    return {"lateness": started, "waiting": containers.filter(started_at__isnull=True).count()}


def status_queries(tokens):
    """Queries made by the status partial (htmx) for each record, on a second, warm request."""
    client = Client(HTTP_HOST="127.0.0.1")
    counts = {}
    for token in tokens:
        tasks = RunTask.objects.filter(run__record__token=token).count()
        for _ in range(2):
            with CaptureQueriesContext(connection) as queries:
                response = client.get(f"/r/{token}/status/", HTTP_HX_REQUEST="true")
        if response.status_code != 200:
            raise RuntimeError(f"the status partial answered {response.status_code}")
        counts[token] = {"tasks": tasks, "queries": len(queries.captured_queries)}
    return counts


_swept = []


def _query_summary(captured):
    """What a request or a job asked of the database: queries by kind and, where the backend shows its
    transactions (SQLite: BEGIN IMMEDIATE ... COMMIT), the write transactions, each autocommitted write
    counting as one."""
    kinds = {"select": 0, "insert": 0, "update": 0, "delete": 0, "other": 0}
    transactions = write_transactions = 0
    in_transaction = wrote = False
    for query in captured:
        sql = query["sql"].lstrip()
        word = sql.split(None, 1)[0].upper() if sql else ""
        if word == "BEGIN":
            transactions += 1
            in_transaction, wrote = True, False
        elif word in ("COMMIT", "ROLLBACK"):
            write_transactions += wrote
            in_transaction = False
        elif word in ("SAVEPOINT", "RELEASE"):
            continue
        else:
            kind = word.lower() if word.lower() in kinds else "other"
            kinds[kind] += 1
            if kind in ("insert", "update", "delete"):
                if in_transaction:
                    wrote = True
                else:
                    write_transactions += 1
    shows_transactions = connection.vendor == "sqlite"
    return {
        "queries": sum(kinds.values()),
        **kinds,
        "write_transactions": write_transactions if shows_transactions else None,
        "transactions": transactions if shows_transactions else None,
        "sql": [query["sql"][:200] for query in captured],
    }


def query_profile(api_key, data):
    """Queries made by one submit (one background branch), one status poll, one callback and one queue
    job of the submit (claim, step, conclude), each measured in process on its second occurrence."""
    client = Client(HTTP_HOST="127.0.0.1")
    profile = {}

    def measure(name, action):
        for _ in range(2):
            with CaptureQueriesContext(connection) as queries:
                action()
        profile[name] = _query_summary(queries.captured_queries)

    def post_submit():
        response = client.post("/f/bench-submit/", data)
        assert response.status_code == 303, response.status_code
        return response["Location"].rstrip("/").rsplit("/", 1)[-1]

    measure("submit", post_submit)
    token = submit("bench-status", data)[0]
    measure("status poll", lambda: client.get(f"/r/{token}/status/", HTTP_HX_REQUEST="true"))

    def callback():
        task_id = RunTask.objects.get(run__record__token=submit("bench-callback", data)[0], status=AWAITING).pk
        body = {"taskId": str(task_id), "status": "SUCCESS", "logs": "done", "output": {"ok": True}, "subtext": "Done"}
        with CaptureQueriesContext(connection) as queries:
            response = client.post(
                "/api/external-events/callback/",
                body,
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {api_key}",
            )
        assert response.status_code == 200, response.content
        return queries.captured_queries

    callback()
    profile["callback"] = _query_summary(callback())

    def job():
        token = post_submit()
        task_ids = set(RunTask.objects.filter(run__record__token=token).values_list("pk", flat=True))
        for row in OrmQ.objects.all():
            task_id, package = _job_task_id(row.payload)
            if task_id in task_ids:
                OrmQ.objects.filter(pk=row.pk).delete()
                with CaptureQueriesContext(connection) as queries:
                    import_string(package["func"])(*package["args"], **package.get("kwargs", {}))
                return queries.captured_queries
        raise RuntimeError("the submit queued no job")

    job()
    profile["queue job (one step)"] = _query_summary(job())
    return profile


def sweep_time(passes=1):
    """Milliseconds per pass of ``events.sweep.sweep()``: the median of ``passes`` passes, each timed on
    its own. The helper's very first pass (imports, first connection) is run but not counted."""
    from events.sweep import sweep

    if not _swept:
        sweep()
        _swept.append(True)
    connection.ensure_connection()  # as in a worker, whose connection is open already
    timings = []
    for _ in range(passes):
        started = time.perf_counter()
        sweep()
        timings.append((time.perf_counter() - started) * 1000)
    return {"ms": statistics.median(timings), "passes": timings}


def stats():
    return {
        "records": Record.objects.count(),
        "runs": {status: Run.objects.filter(status=status).count() for status in Run.Status.values},
        "tasks": RunTask.objects.count(),
        "queued": OrmQ.objects.count(),
    }


if __name__ == "__main__":
    serve(
        {
            name: function
            for name, function in globals().items()
            if callable(function)
            and name
            in {
                "forms_import",
                "api_key_create",
                "submit",
                "stub_start",
                "jobs_run",
                "copies_create",
                "record_delete",
                "awaiting_delete",
                "runs_cancel",
                "awaiting_ids",
                "drain_size",
                "drain",
                "lateness",
                "status_queries",
                "query_profile",
                "sweep_time",
                "stats",
            }
        },
        after_each=lambda: (close_old_connections(), connection.close()),
    )
