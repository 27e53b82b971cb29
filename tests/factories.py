import factory

from events.models import RECORD_UPDATE, Node
from events.versions import tree_publish
from forms_app.models import Field, Form, Record


class FormFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Form

    slug = factory.Sequence(lambda n: f"form-{n}")
    title = factory.Sequence(lambda n: f"Form {n}")
    done_message = "Done, {{ record.email }}"


class FieldFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Field

    form = factory.SubFactory(FormFactory)
    name = factory.Sequence(lambda n: f"field_{n}")
    label = factory.LazyAttribute(lambda o: o.name.replace("_", " ").title())
    type = Field.Type.TEXT
    position = factory.Sequence(int)


class RecordFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Record

    form = factory.SubFactory(FormFactory)
    data = factory.LazyFunction(dict)


def add_node(form, type, *, parent=None, event=RECORD_UPDATE, publish=True, **fields):
    """Append a node to a tree: at the top level, or as the last child of ``parent``.

    The tree is published with it (a new version), so a test that builds a tree and submits runs
    that tree, as an admin's edit and publish would make it. ``publish=False`` changes the draft only.
    """
    node = Node(form=form, event=event, type=type, **fields)
    if parent is None:
        node = Node.objects.add_root(instance=node)
    else:
        node = Node.objects.add_child(parent, instance=node)
    if publish:
        tree_publish(form=form, event=event)
    return node


def publish(form, event=RECORD_UPDATE, **kwargs):
    """Publish the draft of a tree as its next version (None when the live version is the draft already)."""
    return tree_publish(form=form, event=event, **kwargs)


def fields_of(form):
    """A form's fields as config forms take them: name → type."""
    return dict(form.fields.values_list("name", "type"))


def steps_created(record, container_name):
    """The rows of a deferred container's steps, as its first start creates them (without starting it):
    for a test that sets up a state of those steps before the container's job runs. Returns them."""
    from django.db import connection

    from events import hotsql
    from events.engine.runs import container_steps
    from events.engine.snapshot import snapshot_node
    from events.models import RunTask

    container = RunTask.objects.select_related("run").get(run__record=record, name=container_name)
    node = snapshot_node(container.run.snapshot, container.node_id)
    return hotsql.insert(container_steps(run=container.run, task=container, node=node), connection)
