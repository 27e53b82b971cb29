"""Two admins who reviewed the same draft publish at the same moment: one version, the other is told."""

import threading

import pytest
from django.db import connection

from events import versions
from events.models import TreeVersion
from events.versions import DraftChanged, tree_publish, tree_status
from tests.factories import add_node

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_same_review_published_twice_at_once_makes_one_version(form, monkeypatch):
    add_node(form, "set_flag", name="one", config={"flag": "a"})
    add_node(form, "set_flag", name="two", config={"flag": "b"}, publish=False)
    token = tree_status(form=form).token  # what both admins reviewed
    both_read = threading.Barrier(2, timeout=2)
    real = versions.tree_status

    def read_then_wait(**options):
        status = real(**options)
        try:  # hold on until the other admin has read too (unless it cannot read before this one ends)
            both_read.wait()
        except threading.BrokenBarrierError:
            pass
        return status

    monkeypatch.setattr(versions, "tree_status", read_then_wait)
    outcomes = []

    def publish():
        try:
            outcomes.append(tree_publish(form=form, expect=token).number)
        except DraftChanged:
            outcomes.append("refused")
        finally:
            connection.close()

    admins = [threading.Thread(target=publish) for _ in range(2)]
    for admin in admins:
        admin.start()
    for admin in admins:
        admin.join(timeout=30)

    assert sorted(outcomes, key=str) == [2, "refused"]
    assert list(TreeVersion.objects.of_tree(form).values_list("number", flat=True)) == [2, 1]
