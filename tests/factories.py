import factory

from events.models import RECORD_UPDATE, Node
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


def add_node(form, type, *, parent=None, event=RECORD_UPDATE, **fields):
    """Append a node to a tree: at the top level, or as the last child of ``parent``."""
    node = Node(form=form, event=event, type=type, **fields)
    if parent is None:
        return Node.objects.add_root(instance=node)
    return Node.objects.add_child(parent, instance=node)


def fields_of(form):
    """A form's fields as config forms take them: name → type."""
    return dict(form.fields.values_list("name", "type"))
