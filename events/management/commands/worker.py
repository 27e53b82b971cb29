import ctypes
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import time
from datetime import timedelta
from multiprocessing.util import register_after_fork

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from django.utils import timezone
from django_q import cluster as q_cluster

from events import engine, queue, sweep
from events.models import Repair, RunTask

logger = logging.getLogger("events.worker")
EXIT_STALLED = 3  # --exit-on-stall: the watchdog found the cluster stalled (a supervisor starts a fresh worker)
STALLED_STOP_SECONDS = 3  # a stalled cluster will not stop by itself
PR_SET_PDEATHSIG = 1  # prctl(2)


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
        # Every lease this worker's processes take is named under this id (events.models.lease_owner),
        # so that on a stop it can put back what they still hold.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        os.environ["EVENTS_WORKER_ID"] = self.worker_id
        queue.worker_prepare()
        register_after_fork(self, _die_with_parent)
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
                            raise CommandError("the watchdog found the cluster stalled; exiting for the "
                                               "supervisor to start a fresh worker", returncode=EXIT_STALLED)
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
        q_cluster.Sentinel = EventsSentinel  # Cluster.start() looks the name up in its module
        cluster = q_cluster.Cluster()
        cluster.start()
        # Cluster() installs its own handlers; ours stop the loop, which then stops the cluster.
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        return cluster

    def request_stop(self, signum, frame):
        self.stopping.append(signum)

    def cluster_stop(self, cluster, grace):
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
                stats["oldest_ready_age"], limit, stats["ready"],
            )
            return True
        return False


def _die_with_parent(command):
    """In every process of the cluster, just after it forks: die when the process that forked it dies.

    So a worker killed with SIGKILL leaves no headless cluster behind (no
    dispatcher, sweep or watchdog) pulling jobs beside the one that replaces it.
    """
    parent = multiprocessing.parent_process()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        logger.warning("prctl(PR_SET_PDEATHSIG) is not available: cluster processes may outlive a killed worker")
        return
    if parent is not None and os.getppid() != parent.pid:
        os._exit(0)  # the parent died before the signal was armed


class EventsSentinel(q_cluster.Sentinel):
    """django-q2's sentinel, deaf to SIGTERM: ``manage.py worker`` alone decides how its cluster stops.

    A SIGTERM sent to the whole process group (a supervisor, a terminal) would
    otherwise end every cluster process at once (django-q2 restores the default
    action in the sentinel), cutting running steps short; the worker instead
    stops claiming and lets them finish. Its processes inherit this.
    """

    def start(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        super().start()


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
