import logging
import signal
import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections
from django.utils import timezone

from events import sweep, tasks
from events.models import Repair, RunTask

logger = logging.getLogger("events.worker")
CLUSTER_STOP_SECONDS = 30  # a normal stop lets running steps finish
STALLED_STOP_SECONDS = 3  # a stalled cluster will not stop by itself


class Command(BaseCommand):
    help = (
        "Run the django-q2 cluster, our dispatcher of due work (delays, retries, deadlines), "
        "the sweep of lost work and the watchdog of the cluster, until SIGINT or SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--exit-on-stall", action="store_true",
            help="When the watchdog finds the cluster stalled, exit with status 3 (for a supervisor to "
                 "restart) instead of restarting the cluster in place.",
        )

    def handle(self, *args, exit_on_stall=False, **options):
        self.stopping = []
        cluster = self.cluster_start()
        self.stdout.write(f"worker: cluster started; dispatching due tasks every {settings.EVENTS_DISPATCH_INTERVAL} s")
        next_sweep = time.monotonic() + settings.EVENTS_SWEEP_INTERVAL
        try:
            while not self.stopping:
                close_old_connections()
                if not cluster.sentinel.is_alive():
                    logger.error("the django-q2 cluster died; starting it again")
                    Repair.record("cluster_restarted")
                    cluster = self.cluster_start()
                self.dispatch()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + settings.EVENTS_SWEEP_INTERVAL
                    self.sweep()
                    if self.stalled():
                        Repair.record("cluster_restarted")
                        if exit_on_stall:
                            raise SystemExit(3)
                        self.cluster_stop(cluster, grace=STALLED_STOP_SECONDS)
                        cluster = self.cluster_start()
                        self.stdout.write("worker: cluster restarted by the watchdog")
                time.sleep(settings.EVENTS_DISPATCH_INTERVAL)
        finally:
            self.stdout.write("worker: stopping")
            self.cluster_stop(cluster)

    def cluster_start(self):
        from django_q.cluster import Cluster

        cluster = Cluster()
        cluster.start()
        # Cluster() installs its own handlers; ours stop the loop, which then stops the cluster.
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        return cluster

    def request_stop(self, signum, frame):
        self.stopping.append(signum)

    def cluster_stop(self, cluster, grace=CLUSTER_STOP_SECONDS):
        """Stop the cluster; one that does not stop in time is killed (it may be the stalled one)."""
        sentinel = cluster.sentinel
        if sentinel is None or not sentinel.is_alive():
            return
        cluster.stop_event.set()
        sentinel.join(grace)
        if sentinel.is_alive():
            logger.error("the cluster did not stop within %s s; killing it", grace)
            for child in _children(sentinel.pid):
                _kill(child)
            sentinel.kill()
            sentinel.join(5)

    def dispatch(self):
        try:
            sent = tasks.dispatch_due()
        except Exception:
            logger.exception("dispatch failed; trying again")
            return
        if sent:
            logger.info("dispatched %s due task(s)", sent)

    def sweep(self):
        try:
            sweep.sweep()
        except Exception:
            logger.exception("sweep failed; trying again at the next pass")

    def stalled(self):
        """The watchdog: the oldest ready job has waited too long while the cluster claims to run."""
        try:
            stats = tasks.queue_stats()
        except Exception:
            logger.exception("could not read the queue")
            return False
        limit = settings.EVENTS_WATCHDOG_SECONDS
        if stats["oldest_ready_age"] > limit:
            if RunTask.objects.filter(started_at__gte=timezone.now() - timedelta(seconds=limit)).exists():
                return False  # a backlog that moves is not a stall
            logger.error(
                "watchdog: the oldest ready job has waited %.0f s (limit %s s) with %s ready: the cluster is stalled",
                stats["oldest_ready_age"], limit, stats["ready"],
            )
            return True
        return False


def _children(pid):
    """Process ids whose parent is ``pid`` (Linux /proc), so a stalled cluster's workers die with it."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _kill(pid):
    import os

    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
