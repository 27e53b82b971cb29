import pytest

from tests.factories import FieldFactory, FormFactory


@pytest.fixture
def one_field_form(db):
    """``one_field_form(type="integer", min_value=1)``: a form holding that one field, named ``value``."""

    def make(**field):
        form = FormFactory()
        FieldFactory(form=form, **{"name": "value", "label": "Value", **field})
        return form

    return make
