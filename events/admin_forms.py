"""The event-tree editor's form: a node's own fields, its type's config as real fields, and its place in the tree.

One form class is built per node type (``node_form_for``): the type's config
fields are copied in under a ``config_`` prefix, so they can never clash with
the node's own fields. Validation goes through the type (``clean_config``), and
the tree rules are checked here, before anything is written, because
treebeard's form writes to the database while it saves.
"""

import copy

from django import forms
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.html import conditional_escape
from treebeard.forms import MoveNodeForm, movenodeform_factory

from .models import InvalidTreeOperation, Node, field_model, form_model
from .nodes import registry
from .retry import RetryPolicy

CONFIG_PREFIX = "config_"
RETRY_FIELDS = tuple(RetryPolicy.NODE_FIELDS.values())


def position_help_text():
    return (
        f"Only containers ({registry.container_labels()}) hold steps that run in order; "
        "any node, an action too, may hold "
        "error-branch steps (choose “runs when the parent fails” above). A node stays in its own form's event tree."
    )


def config_field_name(name):
    return f"{CONFIG_PREFIX}{name}"


class LinesField(forms.CharField):
    """A list of texts, one per line."""

    widget = forms.Textarea(attrs={"rows": 2})

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, (list, tuple)) else value

    def to_python(self, value):
        return [line.strip() for line in (value or "").splitlines() if line.strip()]


class NodeAdminForm(MoveNodeForm):
    """Add or change one node. Subclasses made by ``node_form_for`` set ``node_type``."""

    node_type = None  # a NodeType class, or None when the stored type is no longer registered
    retry_non_retryable = LinesField(
        label="Not retried",
        required=False,
        help_text="Errors that a retry cannot fix: one per line, the beginning of the error message "
        "(e.g. “HTTP 404”). Such an error fails the step at once.",
    )

    def __init__(self, *args, initial=None, instance=None, place=True, **kwargs):
        """``place=False``: edit the node where it is; the form has no tree, position or branch fields then."""
        initial = dict(initial or {})
        if instance is not None and self.node_type is not None:
            for key, value in self.config_initial(instance.config or {}).items():
                initial.setdefault(config_field_name(key), value)
        super().__init__(*args, initial=initial, instance=instance, **kwargs)
        self.place = place
        if self.instance._state.adding and self.node_type is not None:
            self.instance.type = self.node_type.key
        self.use_config_fields_of_this_form()
        if place:
            self.fields["treebeard_ref_node"].help_text = position_help_text()
        else:
            for name in ("treebeard_position", "treebeard_ref_node", "branch", "form", "event"):
                self.fields.pop(name, None)
        for name in RETRY_FIELDS:
            if name in self.fields:
                self.fields[name].required = False  # left empty: the default (no retry, 10 s, 600 s)
        for field in self.fields.values():
            # Help texts are text ("later steps read tasks.<name>.output"); admin prints them as HTML.
            field.help_text = conditional_escape(field.help_text)

    def use_config_fields_of_this_form(self):
        """The type's config fields as its config form shows them for this node's form.

        A field that names a form field becomes a select of that form's fields (and flags):
        the config form decides, given the form's fields and the flags its trees set.
        """
        if self.node_type is None:
            return
        key = self.tree_key()
        form_fields, form_flags = tree_facts(key[0]) if key else (None, ())
        config_form = self.node_type.config_form(form_fields=form_fields, form_flags=form_flags)
        for name in self.node_type.config_form.base_fields:
            if config_field_name(name) in self.fields:
                self.fields[config_field_name(name)] = config_form.fields[name]

    def config_layout(self):
        """The config fields for a template: {"fields": bound fields, "rows": rows of bound fields, "row_label"}.

        A config form with ``row_columns`` (a condition's rules) has its ``<column>_<n>`` fields as rows.
        """
        if self.node_type is None:
            return {"fields": [], "advanced": [], "rows": [], "row_label": "", "row_columns": []}
        config_form = self.node_type.config_form
        in_rows = {
            f"{column}_{number}" for column in config_form.row_columns for number in range(1, config_form.row_count + 1)
        }
        aside = set(config_form.advanced_fields)
        return {
            "fields": [
                self[config_field_name(name)]
                for name in config_form.base_fields
                if name not in in_rows and name not in aside
            ],
            "advanced": [self[config_field_name(name)] for name in config_form.base_fields if name in aside],
            "rows": [
                [self[config_field_name(f"{column}_{number}")] for column in config_form.row_columns]
                for number in range(1, config_form.row_count + 1)
            ],
            "row_label": config_form.row_label,
            "row_columns": [column.capitalize() for column in config_form.row_columns],
        }

    def config_initial(self, config):
        """A stored config as initial values of the type's own fields (a condition spreads its rules over rows)."""
        from_config = getattr(self.node_type.config_form, "initial_from_config", None)
        return from_config(config) if from_config is not None else config

    # Where the node sits -------------------------------------------------------------------

    def tree_key(self):
        """(form id, event) of the tree this node belongs to, or None if the form is not known yet."""
        if not self.instance._state.adding:
            return self.instance.form_id, self.instance.event
        source = self.data if self.is_bound else self.initial
        form_id = source.get("form")
        if hasattr(form_id, "pk"):
            form_id = form_id.pk
        event = source.get("event") or Node._meta.get_field("event").default
        try:
            return int(form_id), event
        except (TypeError, ValueError):
            return None

    def _get_initial(self, instance):
        """Like treebeard's, but the previous sibling of a root is looked for in this tree only."""
        if instance.is_root():
            previous = (
                Node.objects.of_tree(instance.form_id, instance.event).filter(depth=1, path__lt=instance.path).last()
            )
            if previous is None:
                return {"treebeard_ref_node": None, "treebeard_position": "first-child"}
            return {"treebeard_ref_node": previous, "treebeard_position": "right"}
        return super()._get_initial(instance)

    def _set_ref_model_queryset(self, opts, instance):
        """Offer the nodes of this node's own tree, without the node and its descendants."""
        if instance is not None and not instance._state.adding:
            queryset = Node.objects.of_tree(instance.form_id, instance.event).exclude(path__startswith=instance.path)
        else:
            key = self.tree_key()
            queryset = Node.objects.of_tree(*key) if key else Node.objects.all()
        self.fields["treebeard_ref_node"].queryset = queryset

    # Validation ----------------------------------------------------------------------------

    def raw_config(self):
        """The submitted config values, keyed by the type's own field names, as the type's form expects them."""
        raw = {}
        for name in self.node_type.config_form.base_fields:
            prefixed = config_field_name(name)
            field = self.fields[prefixed]
            raw[name] = field.widget.value_from_datadict(self.data, self.files, self.add_prefix(prefixed))
        return raw

    def clean(self):
        cleaned = super().clean()
        self.clean_tree_position(cleaned)
        self.clean_retry(cleaned)
        if self.node_type is None:
            return cleaned
        config_names = [config_field_name(name) for name in self.node_type.config_form.base_fields]
        if any(name in self.errors for name in config_names):
            return cleaned  # each field already says what is wrong with it
        tree_form = cleaned.get("form") if self.instance._state.adding else self.instance.form
        form_fields = dict(tree_form.fields.values_list("name", "type")) if tree_form is not None else None
        try:
            self.instance.config = self.node_type.clean_config(self.raw_config(), form_fields=form_fields)
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                prefixed = config_field_name(name)
                self.add_error(prefixed if prefixed in self.fields else None, messages)
        return cleaned

    def clean_tree_position(self, cleaned):
        """Refuse, as form errors, the moves and inserts the NodeManager would refuse."""
        if not self.place:
            return
        ref = cleaned.get("treebeard_ref_node")
        position = cleaned.get("treebeard_position")
        branch = cleaned.get("branch") or Node.Branch.MAIN
        if self.instance._state.adding:
            form = cleaned.get("form")
            if form is None:
                return
            probe = Node(form=form, event=cleaned.get("event") or "", type=self.instance.type, branch=branch)
        else:
            # The instance still has its stored branch here; the rules must see the chosen one.
            probe = Node(
                pk=self.instance.pk,
                form_id=self.instance.form_id,
                event=self.instance.event,
                type=self.instance.type,
                branch=branch,
            )
        if ref is None:
            parent = None
        else:
            try:
                if (ref.form_id, ref.event) != (probe.form_id, probe.event):
                    raise InvalidTreeOperation("A node can only be placed in its own form's event tree.")
                parent = ref if position == "first-child" else Node.objects.get_parent(ref)
                Node.objects.check_parent(probe, parent)
            except InvalidTreeOperation as exc:
                self.add_error("treebeard_ref_node", exc.messages)
                return
        if branch == Node.Branch.ON_ERROR and parent is None:
            self.add_error(
                "branch",
                "An error-branch step runs when its parent fails: place it under the node "
                "whose failure it handles (any node: an action, a container or a marker).",
            )

    def clean_retry(self, cleaned):
        """The retry settings, checked by the RetryPolicy they make (as the form file's are)."""
        for name in RETRY_FIELDS:
            if name in self.fields and cleaned.get(name) is None and name not in self.errors:
                cleaned[name] = Node._meta.get_field(name).get_default()
        if any(name in self.errors for name in RETRY_FIELDS):
            return
        policy = RetryPolicy(
            **{attr: cleaned.get(column) for attr, column in RetryPolicy.NODE_FIELDS.items() if column in cleaned}
        )
        columns = {RetryPolicy.DOCUMENT_KEYS[attr]: column for attr, column in RetryPolicy.NODE_FIELDS.items()}
        for key, message in policy.problems().items():
            self.add_error(columns[key], message[0].upper() + message[1:] + ".")

    # Saving --------------------------------------------------------------------------------

    def save(self, commit=True):
        """Insert or move the node where the position fields say, within its own tree.

        treebeard's own save adds every new node as a child of the reference
        node first (refused under an action, even for "before"/"after") and
        moves "to the root" relative to the first root of *any* tree; here both
        stay inside the node's tree. Like treebeard's, this writes at once.
        """
        manager = Node.objects
        node = self.instance
        if not self.place:
            node.save()
            return self.saved(node, commit)
        ref = self.cleaned_data.pop("treebeard_ref_node", None)
        position = self.cleaned_data.pop("treebeard_position")
        if node._state.adding:
            if ref is None:
                node = manager.add_root(instance=node)
            elif position == "first-child":
                first = manager.get_first_child(ref)
                node = (
                    manager.add_sibling(first, "left", instance=node)
                    if first
                    else manager.add_child(ref, instance=node)
                )
            else:
                node = manager.add_sibling(ref, position, instance=node)
        else:
            node.save()
            if {"treebeard_ref_node", "treebeard_position"} & set(self.changed_data):
                if ref is not None:
                    manager.move(node, ref, pos=position)
                else:
                    first_root = manager.of_tree(node.form_id, node.event).filter(depth=1).first()
                    if first_root is not None and first_root.pk != node.pk:
                        manager.move(node, first_root, pos="left")
        return self.saved(node, commit)

    def saved(self, node, commit):
        node.refresh_from_db()
        self.instance = node
        if commit:
            self._save_m2m()
        else:
            self.save_m2m = self._save_m2m
        return node


def node_form_for(node_type):
    """The editor form for one node type: NodeAdminForm plus the type's config fields."""
    attrs = {"node_type": node_type}
    if node_type is not None:
        for name, field in node_type.config_form.base_fields.items():
            attrs[config_field_name(name)] = copy.deepcopy(field)
    base = type(f"{node_type.__name__ if node_type else 'Unknown'}NodeAdminForm", (NodeAdminForm,), attrs)
    return movenodeform_factory(Node, form=base, exclude=("config", "type"))


def tree_facts(form_id):
    """(form_fields, form_flags) of a form: its fields' names → types, and the flags its trees set."""
    form_fields = dict(field_model().objects.filter(form_id=form_id).values_list("name", "type"))
    flags = set(form_model().objects.filter(pk=form_id).exclude(wait_flag="").values_list("wait_flag", flat=True))
    for type_key, config in Node.objects.filter(form_id=form_id).values_list("type", "config"):
        node_type = node_type_or_none(type_key)
        if node_type is not None and isinstance(config, dict):
            flags.update(node_type.flags_set(config))
    return form_fields, sorted(flags)


def node_type_or_none(key):
    try:
        return registry.get(key)
    except registry.UnknownNodeType:
        return None


def node_sequence(node):
    """The nodes of ``node``'s sequence, in order: the top level of its tree, or its parent's steps or error branch."""
    if node.is_root():
        siblings = Node.objects.of_tree(node.form_id, node.event).filter(depth=1)
    else:
        siblings = Node.objects.get_siblings(node)
    return [sibling for sibling in siblings if sibling.branch == node.branch]


class NodeMoveForm(forms.Form):
    """Move one node (with its subtree) one step within its tree, by the tree's rules (NodeManager).

    ``up``, ``down``: past its neighbour in its sequence. ``into``: to the end of the steps of the
    container just above it in its sequence. ``out``: out of its parent's steps or error branch, to
    just after its parent, in the parent's sequence (and branch). A move the rules refuse (steps under
    an action, an error step at the top level) is a form error with the NodeManager's own message.
    """

    DIRECTIONS = {
        "up": "Move up",
        "down": "Move down",
        "into": "Move into the container above",
        "out": "Move out of its container",
    }
    direction = forms.ChoiceField(choices=list(DIRECTIONS.items()))

    def __init__(self, *args, node, **kwargs):
        super().__init__(*args, **kwargs)
        self.node = node

    def clean(self):
        cleaned = super().clean()
        direction = cleaned.get("direction")
        if direction is None:
            return cleaned
        node = self.node
        sequence = node_sequence(node)
        index = next(index for index, sibling in enumerate(sequence) if sibling.pk == node.pk)
        before = sequence[index - 1] if index > 0 else None
        after = sequence[index + 1] if index + 1 < len(sequence) else None
        parent = Node.objects.get_parent(node)
        label = f"“{node.display_label()}”"
        if direction == "up":
            if before is None:
                raise ValidationError(f"{label} is already the first step here.")
            cleaned["place"] = (before, "left", node.branch)
        elif direction == "down":
            if after is None:
                raise ValidationError(f"{label} is already the last step here.")
            cleaned["place"] = (after, "right", node.branch)
        elif direction == "into":
            if before is None:
                raise ValidationError(f"No step above {label} to move it into.")
            steps = [child for child in Node.objects.get_children(before) if child.branch == Node.Branch.MAIN]
            target = (steps[-1], "right") if steps else (before, "last-child")
            cleaned["place"], cleaned["container"] = (*target, Node.Branch.MAIN), before
            self.check(Node.Branch.MAIN, before)
        else:
            if parent is None:
                raise ValidationError(f"{label} is already at the top level.")
            cleaned["place"] = (parent, "right", parent.branch)
            self.check(parent.branch, Node.objects.get_parent(parent))
        return cleaned

    def done_message(self):
        label = f"“{self.node.display_label()}”"
        direction, (target, _, _) = self.cleaned_data["direction"], self.cleaned_data["place"]
        if direction == "into":
            return f"Moved {label} into “{self.cleaned_data['container'].display_label()}”."
        if direction == "out":
            return f"Moved {label} out of “{target.display_label()}”."
        return f"Moved {label} {direction}."

    def check(self, branch, parent):
        """The NodeManager's rules for ``self.node`` in ``branch`` under ``parent``, as a form error."""
        probe = Node(pk=self.node.pk, form_id=self.node.form_id, event=self.node.event, type=self.node.type)
        probe.branch = branch
        try:
            Node.objects.check_parent(probe, parent)
        except InvalidTreeOperation as exc:
            raise ValidationError(exc.messages) from None

    def save(self):
        """Move the node; returns it, fresh. The move and the branch change commit together."""
        target, position, branch = self.cleaned_data["place"]
        with transaction.atomic():
            node = Node.objects.get(pk=self.node.pk)
            node.branch = branch
            Node.objects.move(node, Node.objects.get(pk=target.pk), pos=position)
            Node.objects.filter(pk=node.pk).update(branch=branch)
        return Node.objects.get(pk=node.pk)
