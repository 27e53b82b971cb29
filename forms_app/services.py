"""The submit workflow, across models."""

from django.db import transaction

from events import engine

from .models import RECORD_UPDATE, Record


def record_submit(*, form, data):
    """Store a submission and fire the form's Record Update event.

    The record, its run (pinned to the tree as it is now) and the run's tasks
    commit in one short transaction; only then does the inline phase run, so
    nothing irreversible happens while the transaction could still roll back.
    """
    with transaction.atomic(durable=True):
        record = Record.objects.create(form=form, data=data)
        run = engine.run_start(record=record, event=RECORD_UPDATE, is_submission=True)
    engine.run_inline(run=run)
    return record
