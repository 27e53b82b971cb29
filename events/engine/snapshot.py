"""A run's snapshot: the tree as it was when the run fired, as nested plain data."""

from collections.abc import Iterator
from typing import Any


def snapshot_node(nodes: list[dict[str, Any]], node_id: int) -> dict[str, Any] | None:
    for node in nodes:
        if node["id"] == node_id:
            return node
        found = snapshot_node(node.get("children", []) + node.get("on_error", []), node_id)
        if found is not None:
            return found
    return None


def tree_order(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The snapshot's nodes in the order they run: each node, its children, then its error branch."""
    for node in nodes:
        yield node
        yield from tree_order(node.get("children", []))
        yield from tree_order(node.get("on_error", []))


def subtree_node_ids(nodes):
    ids = []
    for node in nodes:
        ids.append(node["id"])
        ids.extend(subtree_node_ids(node.get("children", [])))
    return ids
