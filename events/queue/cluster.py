"""The django-q2 cluster a ``manage.py worker`` runs: started, watched and stopped from here.

Private parts of django-q2 this relies on (all listed in events/queue/__init__.py's docstring):
``django_q.cluster.Cluster.start`` looks the name ``Sentinel`` up in its module, so a subclass put
there is the one started; ``Cluster.sentinel`` (the sentinel's process) and ``Cluster.stop_event``.
"""

import ctypes
import logging
import multiprocessing
import os
import signal
from multiprocessing.util import register_after_fork

from django_q import cluster as q_cluster

logger = logging.getLogger("events.worker")
PR_SET_PDEATHSIG = 1  # prctl(2)


class QueueCluster:
    """One django-q2 cluster: its sentinel process and, under it, the pusher, the queue workers, the monitor."""

    def __init__(self):
        self._cluster = None

    def start(self):
        q_cluster.Sentinel = EventsSentinel  # Cluster.start() looks the name up in its module
        self._cluster = q_cluster.Cluster()
        self._cluster.start()

    def is_alive(self):
        sentinel = self._cluster.sentinel if self._cluster else None
        return sentinel is not None and sentinel.is_alive()

    def stop(self, *, grace):
        """Stop the cluster; one that does not stop within ``grace`` seconds is killed (it may be stalled)."""
        if not self.is_alive():
            return
        sentinel = self._cluster.sentinel
        self._cluster.stop_event.set()
        sentinel.join(grace)
        if sentinel.is_alive():
            logger.error("the cluster did not stop within %s s; killing it", grace)
            for child in _children(sentinel.pid):
                _kill(child)
            sentinel.kill()
            sentinel.join(5)


def cluster_processes_die_with(owner):
    """From now on every process the cluster forks dies when the process that forked it dies.

    ``owner`` keeps the registration alive (multiprocessing holds it weakly).
    """
    register_after_fork(owner, _die_with_parent)


def _die_with_parent(owner):
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
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
