def entry_created(entry_id):
    """What the insert view hands to the queue: nothing to do (the bench measures the hand-off)."""


def noop():
    """The raw drain's job."""
