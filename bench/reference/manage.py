#!/usr/bin/env python
"""The reference app's manage.py: a minimal hand-written Django + django-q2 project (see refsite/settings.py)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "refsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
