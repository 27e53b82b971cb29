import logging
import os
import secrets
import signal
import socket
import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from django.utils import timezone

from events import engine, queue, sweep
from events.models import Repair, RunTask
from events.queue.cluster import QueueCluster, cluster_processes_die_with

logger = logging.getLogger("events.worker")
EXIT_STALLED = 3  # --exit-on-stall: the watchdog found the cluster stalled (a supervisor starts a fresh worker)
STALLED_STOP_SECONDS = 3  # a stalled cluster will not stop by itself


class Command(BaseCommand):
    help = (
        "Run the django-q2 cluster, our dispatcher of due work (delays, retries, deadlines), "
        "the sweep of lost work and the watchdog of the cluster, until SIGINT or SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--exit-on-stall",
            action="store_true",
            help="When the watchdog finds the cluster stalled, exit with status 3 (for a supervisor to "
            "restart) instead of restarting the cluster in place.",
        )

    def handle(self, *args, exit_on_stall=False, **options):
        self.stopping = []
        # Every lease this worker's processes take is named under this id (events.models.lease_owner),
        # so that on a stop it can put back what they still hold.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        os.environ["EVENTS_WORKER_ID"] = self.worker_id
        queue.worker_prepare()
        cluster_processes_die_with(self)
        cluster = self.cluster_start()
        self.stdout.write(f"worker: cluster started; dispatching due tasks every {settings.EVENTS_DISPATCH_INTERVAL} s")
        next_sweep = time.monotonic() + settings.EVENTS_SWEEP_INTERVAL
        try:
            while not self.stopping:
                close_old_connections()
                if not cluster.is_alive():
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
                            raise CommandError(
                                "the watchdog found the cluster stalled; exiting for the "
                                "supervisor to start a fresh worker",
                                returncode=EXIT_STALLED,
                            )
                        self.cluster_stop(cluster, grace=STALLED_STOP_SECONDS)
                        close_old_connections()
                        self.release_held()
                        cluster = self.cluster_start()
                        self.stdout.write("worker: cluster restarted by the watchdog")
                time.sleep(settings.EVENTS_DISPATCH_INTERVAL)
        finally:
            self.stdout.write("worker: stopping; running steps may finish, nothing new starts")
            self.stop(cluster)

    def stop(self, cluster):
        """Stop claiming, let running steps finish (within the grace period), put back what is left."""
        queue.worker_stop_claiming()
        self.cluster_stop(cluster, grace=settings.EVENTS_STOP_GRACE_SECONDS)
        close_old_connections()
        released = self.release_held()
        self.stdout.write(f"worker: stopped; {released} unfinished step(s) put back for the next worker")

    def release_held(self):
        """Once the cluster is gone: what its processes still held goes back to pending, due now."""
        try:
            released, failed = engine.leases_release(
                tasks=RunTask.objects.filter(lease_owner__startswith=f"{self.worker_id}/"), reason="its worker stopped"
            )
        except Exception:
            logger.exception("could not put back the steps this worker held; their leases will run out")
            return 0
        if released or failed:
            logger.warning("put back %s step(s) this worker had not finished (%s given up)", released, failed)
            sweep.record_repairs({"lease_released_on_stop": released, "lease_expired_failed": failed})
        return released

    def cluster_start(self):
        cluster = QueueCluster()
        cluster.start()
        # django-q2 installs its own handlers; ours stop the loop, which then stops the cluster.
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        return cluster

    def request_stop(self, signum, frame):
        self.stopping.append(signum)

    def cluster_stop(self, cluster, grace):
        cluster.stop(grace=grace)

    def dispatch(self):
        """Due containers and retries go to the queue; callbacks past their deadline fail (each tick)."""
        try:
            sent = queue.dispatch_due()
            expired = engine.awaiting_expire()
        except Exception:
            logger.exception("dispatch failed; trying again")
            return
        if sent:
            logger.info("dispatched %s due task(s)", sent)
        if expired:
            sweep.record_repairs({"deadline_expired": expired})

    def sweep(self):
        try:
            sweep.sweep()
        except Exception:
            logger.exception("sweep failed; trying again at the next pass")

    def stalled(self):
        """The watchdog: the oldest ready job has waited too long while the cluster claims to run."""
        try:
            stats = queue.queue_stats()
        except Exception:
            logger.exception("could not read the queue")
            return False
        limit = settings.EVENTS_WATCHDOG_SECONDS
        if stats["oldest_ready_age"] > limit:
            if RunTask.objects.filter(started_at__gte=timezone.now() - timedelta(seconds=limit)).exists():
                return False  # a backlog that moves is not a stall
            logger.error(
                "watchdog: the oldest ready job has waited %.0f s (limit %s s) with %s ready: the cluster is stalled",
                stats["oldest_ready_age"],
                limit,
                stats["ready"],
            )
            return True
        return False
