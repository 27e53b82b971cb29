"""The engine: start a run, walk its sequences, defer containers, settle failures and callbacks, end the run.

Split by concern:

- ``runs``: start a run pinned to a snapshot; complete, fail or cancel it;
- ``walks``: walk a sequence (actions, conditions, markers, deferred containers) and a worker's job;
- ``failures``: what follows a failed step (its error branch or the run failing), retries, redrive,
  leases whose holder is gone;
- ``callbacks``: steps that wait for an external system, their callbacks, progress and deadlines;
- ``sequences``: what follows a step finished outside a walk, a stopping worker's hand-back, the
  sweep's repair of a stalled run;
- ``snapshot``: finding nodes in a run's snapshot.

Nothing here imports django_q: work goes to the queue through ``events.queue``.
"""

from .callbacks import (
    CALLBACK_PATH,
    CallbackResult,
    awaiting_expire,
    callback_digest,
    task_await,
    task_callback,
    task_progress,
    task_store_waiting,
)
from .failures import leases_release, task_redrive
from .runs import LIVE, Outcome, run_cancel, run_fail, run_finish_if_done, run_start, steps_not_started
from .sequences import run_repair
from .snapshot import snapshot_node, tree_order
from .walks import error_branch_job, run_inline, run_trigger, sequence_resume, task_job

__all__ = [
    "CALLBACK_PATH",
    "LIVE",
    "CallbackResult",
    "Outcome",
    "awaiting_expire",
    "callback_digest",
    "error_branch_job",
    "leases_release",
    "run_cancel",
    "run_fail",
    "run_finish_if_done",
    "run_inline",
    "run_repair",
    "run_start",
    "run_trigger",
    "sequence_resume",
    "snapshot_node",
    "steps_not_started",
    "task_await",
    "task_callback",
    "task_job",
    "task_progress",
    "task_redrive",
    "task_store_waiting",
    "tree_order",
]
