import json
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from events import queue
from events.models import Repair, RunTask


class Command(BaseCommand):
    help = (
        "Print the health of the queue and the tasks: queue age, stuck and overdue tasks, awaiting tasks "
        "past their deadline, and the sweep's repairs. Exits 1 when unhealthy (for monitoring)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="Print one JSON object instead of text."
        )
        parser.add_argument(
            "--overdue-seconds",
            type=int,
            default=60,
            help="A task due longer ago than this and still pending counts as overdue (60).",
        )

    def handle(self, *args, as_json=False, overdue_seconds=60, **options):
        report = health(overdue_seconds=overdue_seconds)
        if as_json:
            self.stdout.write(json.dumps(report, default=str, indent=2))
        else:
            for key, value in report.items():
                if key != "repairs":
                    self.stdout.write(f"{key.replace('_', ' ')}: {value}")
            self.stdout.write("repairs by the sweep:" + ("" if report["repairs"] else " none"))
            for kind, counted in report["repairs"].items():
                self.stdout.write(f"  {kind}: {counted['count']} (last {counted['last_at']})")
        if not report["healthy"]:
            raise CommandError(f"unhealthy: {report['problems']}", returncode=1)


def health(*, overdue_seconds=60):
    now = timezone.now()
    stats = queue.queue_stats(now=now)
    stuck = RunTask.objects.filter(status=RunTask.Status.ACTIVE, lease_expires_at__lt=now).count()
    overdue = RunTask.objects.filter(
        status=RunTask.Status.PENDING, due_at__lt=now - timedelta(seconds=overdue_seconds)
    ).count()
    past_deadline = RunTask.objects.awaiting_past_deadline(now).count()
    problems = []
    if stats["oldest_ready_age"] > settings.EVENTS_WATCHDOG_SECONDS:
        problems.append(f"the oldest ready job has waited {stats['oldest_ready_age']:.0f} s")
    if stuck:
        problems.append(f"{stuck} task(s) held by a worker that stopped (lease expired)")
    if overdue:
        problems.append(f"{overdue} task(s) due more than {overdue_seconds} s ago")
    if past_deadline:
        problems.append(f"{past_deadline} awaiting task(s) past their deadline")
    return {
        "healthy": not problems,
        "problems": "; ".join(problems) or "none",
        "queue_ready_jobs": stats["ready"],
        "queue_taken_jobs": stats["taken"],
        "queue_oldest_ready_age_seconds": round(stats["oldest_ready_age"], 1),
        "stuck_tasks": stuck,
        "overdue_tasks": overdue,
        "awaiting_past_deadline": past_deadline,
        "awaiting": RunTask.objects.filter(status=RunTask.Status.AWAITING).count(),
        "repairs": {r.kind: {"count": r.count, "last_at": r.last_at} for r in Repair.objects.all()},
    }
