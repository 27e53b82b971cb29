"""The submit workflow, across models."""

import logging

from django.db import connection, transaction

from events import engine, hotsql
from events.models import RECORD_UPDATE, TreeVersion
from events.nodes.base import steps_in_web_request

from .models import Record

logger = logging.getLogger("forms_app.services")


def record_submit(*, form, data, version=engine.LIVE):
    """Store a submission and fire the form's Record Update event.

    The record, its run (pinned to the tree's live version: the latest published one, never the
    draft the builder edits) and the run's tasks commit together (on PostgreSQL in one statement,
    else in one short transaction); only then does the inline phase run, so nothing irreversible
    happens while the write could still roll back.
    It runs in the caller's web request: each of its steps waits at most
    EVENTS_INLINE_STEP_MAX_SECONDS for any one thing (a pause, a connection, an answer).
    ``version``: the live version (None: none is published), when the caller read it with the form
    (``published_form``); by default it is read here.
    """
    if version is engine.LIVE:
        version = TreeVersion.objects.live(form, RECORD_UPDATE)
    try:
        # On PostgreSQL the record's, the run's, the tasks' and the broker rows' inserts are one statement.
        with hotsql.one_statement(connection):
            record, run = _store(form, data, version)
    except hotsql.NotOneStatement:
        with transaction.atomic(durable=True):
            record, run = _store(form, data, version)
    try:
        with steps_in_web_request():
            engine.run_inline(run=run)
    except Exception:
        # The submission is stored: the user gets the waiting page, and the worker's sweep
        # resumes a run whose inline phase broke off (say, the database went away).
        logger.exception("The inline phase of run %s broke off; the sweep will resume it", run.pk)
    return record


def _store(form, data, version):
    """The record, its run and the run's tasks (the caller's one statement or transaction)."""
    record = hotsql.new(Record, form_id=form.pk, data=data, is_complete=not (version and version.snapshot))
    Record.form.field.set_cached_value(record, form)
    hotsql.insert([record], connection)  # a hot statement (every submit): written as SQL, not compiled per call
    run = engine.run_start(record=record, event=RECORD_UPDATE, is_submission=True, version=version)
    return record, run
