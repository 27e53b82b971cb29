import re
from pathlib import Path

import pytest

from events import nodes  # noqa: F401  fills the registry
from events.models import Node
from events.nodes import registry
from events.nodes.base import ConfigForm, NodeType

ROOT = Path(__file__).resolve().parents[2]
NODE_TESTS = Path(__file__).resolve().parent / "nodes"
# Each module of events/nodes/ but these defines one type, under the module's name.
TYPE_MODULES = {path.stem for path in (ROOT / "events" / "nodes").glob("*.py")} - {"__init__", "base", "registry"}

# One valid config per type, as an admin would enter it. A new type needs one here.
SAMPLE_CONFIGS = {
    "background": {},
    "condition": {"match": "all", "rules": [{"field": "seats", "operator": "greater_than", "value": "2"}]},
    "delay": {"after_seconds": 600},
    "fail": {"message": "Failed on purpose"},
    "go_async": {},
    "http_request": {"method": "POST", "url": "https://example.com/hook", "timeout_seconds": 5},
    "pause": {"seconds": 1},
    "send_email": {"to": "{{ record.email }}", "subject": "Hello", "body": "Thanks"},
    "set_flag": {"flag": "paid", "value": True},
    "set_subtext": {"text": "Working on it"},
    "trigger_event": {"event": "x"},
    "update_field": {"field": "status", "value": "{{ record.email }}"},
}

TYPES = registry.all_types()


def test_every_node_type_module_registers_its_type_under_its_name():
    assert TYPE_MODULES <= {node_type.key for node_type in TYPES}


@pytest.mark.parametrize("node_type", TYPES, ids=lambda cls: cls.key)
def test_node_type_has_key_label_and_config_form(node_type):
    assert re.fullmatch(r"[a-z][a-z0-9_]*", node_type.key)
    assert registry.get(node_type.key) is node_type
    assert isinstance(node_type.label, str) and node_type.label.strip()
    assert issubclass(node_type.config_form, ConfigForm)
    assert (node_type.key, node_type.label) in registry.choices()
    assert node_type.key in dict(Node._meta.get_field("type").choices)


@pytest.mark.parametrize("node_type", TYPES, ids=lambda cls: cls.key)
def test_node_type_implements_its_kind(node_type):
    if node_type.is_marker:
        # Changes how its sequence runs (go_async): the engine does it all, nothing to implement.
        assert not node_type.is_container, f"{node_type.key} is a marker and a container at once"
        return
    if node_type.is_container:
        # A deferred container says when its steps start; an inline one (condition) whether they run.
        method = "due_at" if node_type.is_deferred else "holds"
    else:
        method = "execute"
    assert getattr(node_type, method) is not getattr(NodeType, method), f"{node_type.key} must implement {method}()"


@pytest.mark.parametrize("node_type", TYPES, ids=lambda cls: cls.key)
def test_node_type_describes_a_valid_config(node_type):
    assert node_type.key in SAMPLE_CONFIGS, f"add a sample config for {node_type.key} to SAMPLE_CONFIGS"
    config = node_type.clean_config(SAMPLE_CONFIGS[node_type.key])

    description = node_type.describe(config)

    assert isinstance(description, str) and description.strip()


@pytest.mark.parametrize("node_type", TYPES, ids=lambda cls: cls.key)
def test_node_type_has_a_test_module(node_type):
    assert (NODE_TESTS / f"test_{node_type.key}.py").is_file(), f"tests/events/nodes/test_{node_type.key}.py is missing"


def test_registering_a_key_twice_raises_and_keeps_the_first():
    original = registry.get("update_field")

    class Impostor(NodeType):
        """Pretends to be update_field."""

        key = "update_field"
        label = "Impostor"
        config_form = ConfigForm

    with pytest.raises(RuntimeError, match="update_field"):
        registry.register(Impostor)

    assert registry.get("update_field") is original


def test_an_unknown_key_raises_naming_the_known_keys():
    with pytest.raises(registry.UnknownNodeType) as excinfo:
        registry.get("teleport")

    message = str(excinfo.value)
    assert "teleport" in message
    for node_type in TYPES:
        assert node_type.key in message
    assert excinfo.value.key == "teleport"
    assert isinstance(excinfo.value, LookupError)


def test_all_types_are_sorted_by_key():
    keys = [node_type.key for node_type in TYPES]
    assert keys == sorted(keys)
