"""Task ids are version 7 UUIDs: unguessable, and in the order they were made."""

import time
import uuid

import pytest

from events.ids import uuid7
from events.models import Run, RunTask
from forms_app.services import record_submit
from tests.factories import add_node


def test_an_id_is_a_version_7_uuid_whose_first_48_bits_are_the_time_in_milliseconds():
    before = time.time_ns() // 1_000_000
    made = uuid7()
    after = time.time_ns() // 1_000_000

    assert (made.version, made.variant) == (7, uuid.RFC_4122)
    assert before <= made.int >> 80 <= after
    assert uuid.UUID(str(made)) == made


def test_ids_made_later_sort_later_and_the_rest_is_random():
    first = [uuid7() for _ in range(1000)]
    time.sleep(0.002)
    later = [uuid7() for _ in range(1000)]

    assert max(first) < min(later)  # as UUIDs, as their text and as PostgreSQL's uuid compare them
    assert max(map(str, first)) < min(map(str, later))
    assert len(set(first + later)) == 2000
    # 74 random bits: within one millisecond, the ids do not count up.
    same_ms = [made for made in first if made.int >> 80 == first[0].int >> 80]
    assert len(same_ms) < 10 or sorted(same_ms) != same_ms


@pytest.mark.django_db
def test_a_submission_s_tasks_have_such_ids_and_its_run_a_random_one(form):
    background = add_node(form, "background", name="later")
    add_node(form, "set_flag", parent=background, config={"flag": "done"})
    add_node(form, "set_flag", config={"flag": "now"})

    record = record_submit(form=form, data={"email": "a@example.com"})

    run = Run.objects.get(record=record)
    ids = list(RunTask.objects.filter(run=run).values_list("pk", flat=True))
    assert len(ids) == 2 and {made.version for made in ids} == {7}
    assert run.pk.version == 4  # its first 8 digits are its reference (Run.reference), not the time
