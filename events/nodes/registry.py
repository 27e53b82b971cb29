"""The node-type registry: one dict, filled by ``@register`` in each type's module."""

_types = {}


class UnknownNodeType(LookupError):
    def __init__(self, key):
        super().__init__(f"Unknown node type “{key}”. Known types: {', '.join(sorted(_types))}.")
        self.key = key


def register(cls):
    if cls.key in _types:
        raise RuntimeError(f"Node type key “{cls.key}” is registered twice ({_types[cls.key]!r} and {cls!r}).")
    _types[cls.key] = cls
    return cls


def get(key):
    try:
        return _types[key]
    except KeyError:
        raise UnknownNodeType(key) from None


def all_types():
    return [_types[key] for key in sorted(_types)]


def choices():
    return [(cls.key, cls.label) for cls in all_types()]


def container_labels():
    """The labels of the types that hold steps, for messages: “Background, Condition and Delay”."""
    labels = [cls.label for cls in all_types() if cls.is_container]
    return ", ".join(labels[:-1]) + f" and {labels[-1]}" if len(labels) > 1 else "".join(labels)
