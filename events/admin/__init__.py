"""Admin: the event-tree editor and its overview (trees.py), runs and tasks (runs.py), API keys (keys.py)."""

from . import keys, runs, testruns, trees  # noqa: F401  (each registers its model admins)
from .common import pretty_json, tree_editor_url, tree_overview_url
from .runs import RUN_PAGE_LOG_LINES

__all__ = ["RUN_PAGE_LOG_LINES", "pretty_json", "tree_editor_url", "tree_overview_url"]
