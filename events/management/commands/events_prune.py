from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from events.models import Run
from events.queue import prune_queue_results


class Command(BaseCommand):
    help = (
        "Delete finished runs (and their tasks) older than the retention period, and django-q2's old "
        "results. Records are kept. Run it daily (cron, a systemd timer)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days", type=int, default=None, help="Keep this many days (default: EVENTS_RETENTION_DAYS, 30)."
        )
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args, days=None, dry_run=False, **options):
        days = settings.EVENTS_RETENTION_DAYS if days is None else days
        if days < 1:
            raise CommandError("Keep at least one day.", returncode=2)
        cutoff = timezone.now() - timedelta(days=days)
        old = Run.objects.filter(status__in=Run.TERMINAL, finished_at__lt=cutoff)
        count = old.count()
        if dry_run:
            self.stdout.write(f"{count} finished run(s) older than {days} days would be deleted.")
            return
        deleted_runs = 0
        while True:  # in batches, to keep each transaction short
            batch = list(old.values_list("pk", flat=True)[:500])
            if not batch:
                break
            Run.objects.filter(pk__in=batch).delete()
            deleted_runs += len(batch)
        results = prune_queue_results(before=cutoff)
        self.stdout.write(
            f"Deleted {deleted_runs} finished run(s) older than {days} days and {results} queue result(s)."
        )
