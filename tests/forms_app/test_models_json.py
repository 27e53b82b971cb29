"""Record keys are written by the database, one key at a time: concurrent writers keep each other's keys."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from forms_app.models import Record
from tests.factories import RecordFactory


@pytest.mark.parametrize("value", ["text", 3, 2.5, True, None, {"nested": [1, "two"]}, "quote \" and ' marks"])
def test_a_value_set_on_a_record_is_stored_and_the_other_keys_stay(db, value):
    record = RecordFactory(data={"email": "ann@example.com", "status": "new"})
    other_copy = Record.objects.get(pk=record.pk)

    record.set_value("status", value)
    other_copy.set_value("seat", "12A")  # a writer holding an older copy of the row

    stored = Record.objects.get(pk=record.pk).data
    assert stored == {"email": "ann@example.com", "status": value, "seat": "12A"}
    assert record.data["status"] == value


def test_setting_a_flag_is_one_update_and_no_read(db):
    record = RecordFactory(flags={"paid": False})

    with CaptureQueriesContext(connection) as queries:
        record.set_flag("booked")

    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
    assert Record.objects.get(pk=record.pk).flags == {"paid": False, "booked": True}


def test_an_unusual_key_is_still_written_safely(db):
    record = RecordFactory(data={"a": 1})

    record.set_value('we"ird.key', "x")

    assert Record.objects.get(pk=record.pk).data == {"a": 1, 'we"ird.key': "x"}
