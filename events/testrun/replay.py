"""Replays: recent records of a form test-run through two versions of a tree, with what differs per record.

``replay_start`` keeps both trees as they are now (the draft goes on changing), picks the records
and sends one job; ``replay_work`` (the job, in a worker) plays records in slices of at most
EVENTS_REPLAY_SLICE_SECONDS, one ReplayItem per record, then sends itself again for the rest,
so no job outlives django-q2's timeout and a stopping worker loses at most a slice. A lease on
the replay (``claimed_until``) keeps a duplicate delivery out; the sweep sends the job again when
a worker died holding it (``replays_resume``).
"""

import json
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import queue
from ..models import RECORD_UPDATE, Node, Replay, ReplayItem, TreeVersion, record_model
from . import TestRunError, tree_test_run
from .canned import canned_parse

logger = logging.getLogger("events.testrun")

REPLAY_JOB = "events.tasks.replay_job"
LEASE_SECONDS = 60


class ReplayError(ValueError):
    """A replay that cannot start: no records, too many, or bad canned answers."""


def replay_records(form, *, count: int | None = None, since=None, until=None) -> list[int]:
    """The ids of the records to replay: the ``count`` most recent ones, or those submitted in [since, until]."""
    records = record_model().objects.filter(form=form)
    if since is not None:
        records = records.filter(created_at__gte=since)
    if until is not None:
        records = records.filter(created_at__lte=until)
    limit = settings.EVENTS_REPLAY_MAX_RECORDS
    ids = list(records.order_by("-created_at", "-pk").values_list("pk", flat=True)[: (count or limit) + 1])
    if count is None and len(ids) > limit:
        raise ReplayError(
            f"{len(ids) - 1}+ records were submitted in that range: a replay takes at most {limit}. "
            "Choose a shorter range or a number of recent records."
        )
    return ids[: count or limit]


def replay_start(
    *,
    form,
    record_ids: list[int],
    event: str = RECORD_UPDATE,
    baseline: TreeVersion | None = None,
    candidate: TreeVersion | None = None,
    canned: Any = None,
    user=None,
) -> Replay:
    """Queue a replay of ``record_ids`` through ``baseline`` (default: the live version) and ``candidate``
    (default: the draft as it is now). Raises ReplayError for no records, too many, or bad canned answers."""
    limit = settings.EVENTS_REPLAY_MAX_RECORDS
    if not record_ids:
        raise ReplayError("There are no records to replay: none was submitted (in that range).")
    if len(record_ids) > limit:
        raise ReplayError(
            f"A replay takes at most {limit} records (EVENTS_REPLAY_MAX_RECORDS); {len(record_ids)} given."
        )
    try:
        canned_parse(canned)
    except ValueError as exc:
        raise ReplayError(f"The canned answers have problems: {exc}") from None
    if isinstance(canned, str):
        canned = json.loads(canned or "{}")
    baseline = baseline or TreeVersion.objects.live(form, event)
    if candidate is not None:
        candidate_label, candidate_snapshot = f"version {candidate.number}", candidate.snapshot
    else:
        candidate_label, candidate_snapshot = "draft", Node.objects.snapshot(form, event)
    with transaction.atomic():
        replay = Replay.objects.create(
            form=form,
            event=event,
            baseline_label=f"version {baseline.number}" if baseline else "nothing published",
            baseline=baseline.snapshot if baseline else [],
            candidate_label=candidate_label,
            candidate=candidate_snapshot,
            canned=canned or {},
            record_ids=list(record_ids),
            total=len(record_ids),
            created_by=user if user is not None and user.is_authenticated else None,
        )
        replay_send(replay.pk)
    return replay


def replay_send(replay_id) -> None:
    """Send the replay's job, in the current transaction (one is opened if none is): a worker plays it next."""
    with transaction.atomic():
        Replay.objects.filter(pk=replay_id).update(claimed_until=None, sent_at=timezone.now())
        queue.job_send(REPLAY_JOB, str(replay_id), name=f"replay-{replay_id}")


def replay_work(replay_id, *, slice_seconds: float | None = None) -> str:
    """The job: play the next slice of a replay's records; send the job again while records remain.

    The replay is leased (``claimed_until``) while a worker plays it, and each record renews the
    lease with a compare-and-set: a worker that finds its lease taken (it was too slow, and the
    sweep sent the replay on) stops. A stopping worker sends the job again and stops too.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=LEASE_SECONDS)
    claimable = Replay.objects.filter(pk=replay_id, status__in=[Replay.Status.QUEUED, Replay.Status.RUNNING]).filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    )
    if not claimable.update(status=Replay.Status.RUNNING, claimed_until=lease):
        return "held elsewhere, or finished"
    replay = Replay.objects.select_related("form").get(pk=replay_id)
    budget = slice_seconds if slice_seconds is not None else settings.EVENTS_REPLAY_SLICE_SECONDS
    stop_at = timezone.now() + timedelta(seconds=budget)
    position = replay.done
    try:
        while position < replay.total:
            lease = _replay_one(replay, position, lease)
            if lease is None:
                return "lease lost"  # another worker plays it now
            position += 1
            if position < replay.total and (queue.worker_stopping() or timezone.now() >= stop_at):
                if Replay.objects.filter(pk=replay.pk, claimed_until=lease).exists():
                    replay_send(replay.pk)
                return "continued"
    except Exception as exc:
        logger.exception("Replay %s failed", replay.pk)
        Replay.objects.filter(pk=replay.pk).update(
            status=Replay.Status.FAILED, error=f"{exc.__class__.__name__}: {exc}", finished_at=timezone.now()
        )
        return "failed"
    Replay.objects.filter(pk=replay.pk, claimed_until=lease).update(
        status=Replay.Status.DONE, claimed_until=None, finished_at=timezone.now()
    )
    return "done"


def _replay_one(replay, position, lease):
    """Test-run one record through both trees and store what differs, its item and the progress together.

    Returns the renewed lease, or None when the lease was no longer this worker's (nothing stored).
    """
    record_id = replay.record_ids[position]
    record = record_model().objects.filter(pk=record_id, form=replay.form).first()
    item = ReplayItem(replay=replay, position=position, record_id=record_id)
    if record is None:
        item.error = "The record was deleted before it was replayed."
    else:
        item.record_token, item.submitted_at = record.token, record.created_at
        start = timezone.now()  # one submit time for both: what differs is the trees, not the clock
        try:
            before, after = (
                tree_test_run(
                    form=replay.form,
                    event=replay.event,
                    snapshot=snapshot,
                    label=label,
                    record=record,
                    canned=replay.canned,
                    start=start,
                )
                for snapshot, label in (
                    (replay.baseline, replay.baseline_label),
                    (replay.candidate, replay.candidate_label),
                )
            )
            item.baseline_status, item.candidate_status = before.status, after.status
            item.differences = differences(before.comparable(), after.comparable())
        except TestRunError as exc:
            item.error = str(exc)
    renewed = timezone.now() + timedelta(seconds=LEASE_SECONDS)
    with transaction.atomic():
        if not Replay.objects.filter(pk=replay.pk, claimed_until=lease).update(
            done=F("done") + 1,
            differing=F("differing") + (1 if item.differences or item.error else 0),
            claimed_until=renewed,
        ):
            return None
        try:
            with transaction.atomic():
                item.save()
        except IntegrityError:  # played already, by a worker whose lease this one took over
            Replay.objects.filter(pk=replay.pk).update(
                done=F("done") - 1, differing=F("differing") - (1 if item.differences or item.error else 0)
            )
    return renewed


def replays_resume(*, now=None) -> int:
    """The sweep: send on each unfinished replay whose worker let its lease lapse, or whose job was lost.

    A job is taken as lost when no worker has claimed the replay EVENTS_REQUEUE_AFTER_SECONDS after
    it was sent (a stopping worker acknowledged it, the broker lost it). A duplicate only loses the claim.
    """
    now = now or timezone.now()
    unfinished = Replay.objects.filter(status__in=[Replay.Status.QUEUED, Replay.Status.RUNNING])
    stale = unfinished.filter(
        Q(claimed_until__lt=now)
        | Q(claimed_until__isnull=True, sent_at__lt=now - timedelta(seconds=settings.EVENTS_REQUEUE_AFTER_SECONDS))
    )
    resumed = 0
    for replay_id, claimed_until, sent_at in stale.values_list("pk", "claimed_until", "sent_at")[:50]:
        with transaction.atomic():
            if Replay.objects.filter(pk=replay_id, claimed_until=claimed_until, sent_at=sent_at).update(
                claimed_until=None, sent_at=now
            ):
                queue.job_send(REPLAY_JOB, str(replay_id), name=f"replay-{replay_id}")
                resumed += 1
    return resumed


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """What differs between two test runs' ``comparable()``: [{what, before, after}], in a reader's order."""
    found = []

    def differ(what, old, new):
        if old != new:
            found.append({"what": what, "before": old, "after": new})

    differ("run", before["status"], after["status"])
    for key in sorted(set(before["data"]) | set(after["data"])):
        differ(f"field {key}", before["data"].get(key), after["data"].get(key))
    for key in sorted(set(before["flags"]) | set(after["flags"])):
        differ(f"flag {key}", before["flags"].get(key), after["flags"].get(key))
    differ("emails", _emails(before), _emails(after))
    differ("HTTP calls", _calls(before), _calls(after))
    differ("failed steps", _failures(before), _failures(after))
    differ("waiting page", _waiting(before), _waiting(after))
    return found


def _emails(result):
    return [f"{', '.join(email['to'])}: {email['subject']}" for email in result["emails"]]


def _calls(result):
    return [f"{call['method']} {call['url']}" for call in result["http_calls"]]


def _failures(result):
    return [
        f"{failed['node']}: {failed['error']}" + (" (handled)" if failed["handled"] else "")
        for failed in result["failed_steps"]
    ]


def _waiting(result):
    waiting = result["waiting"]
    return f"{waiting['state']}: {waiting['message']}" if waiting["message"] else waiting["state"]
