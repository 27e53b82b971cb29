import logging
import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from events import engine, tasks

logger = logging.getLogger("events.worker")


class Command(BaseCommand):
    help = "Run the django-q2 cluster, our dispatcher of due delays and the expiry of callback deadlines, until SIGINT or SIGTERM."

    def handle(self, *args, **options):
        from django_q.cluster import Cluster

        cluster = Cluster()
        cluster.start()
        stopping = []

        def stop(signum, frame):
            stopping.append(signum)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        self.stdout.write(f"worker: cluster started; dispatching due tasks every {settings.EVENTS_DISPATCH_INTERVAL} s")
        try:
            while not stopping and cluster.sentinel.is_alive():
                close_old_connections()
                try:
                    sent = tasks.dispatch_due()
                    expired = engine.awaiting_expire()
                except Exception:
                    logger.exception("dispatch failed; trying again")
                    sent = expired = 0
                if sent:
                    logger.info("dispatched %s due task(s)", sent)
                if expired:
                    logger.info("%s awaiting task(s) timed out", expired)
                time.sleep(settings.EVENTS_DISPATCH_INTERVAL)
        finally:
            self.stdout.write("worker: stopping")
            cluster.stop()
        if not stopping:
            raise SystemExit("worker: the django-q2 cluster stopped unexpectedly")
