"""Ids of tasks: version 7 UUIDs, which sort in the order they were made."""

import os
import time
import uuid


def uuid7() -> uuid.UUID:
    """A version 7 UUID (RFC 9562): the Unix time in milliseconds (48 bits), then 74 random bits.

    A run's tasks are inserted together, and ids made one after another sort together: their entries
    go to the end of the primary key's index, one page for a submit's tasks, where random (version 4)
    ids touched one page anywhere in the index per task, each written again at commit. (A run keeps a
    random id: its first 8 digits are the reference a user quotes, and here they would be the time.)
    74 random bits keep an id unguessable; what it tells is when the row was made, which the row
    says anyway. (Python 3.14's ``uuid.uuid7`` makes the same kind of id.)
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    value = value & ~(0xF << 76) | 0x7 << 76  # the version
    value = value & ~(0x3 << 62) | 0x2 << 62  # the variant (RFC 9562)
    return uuid.UUID(int=value)
