#!/usr/bin/env python
"""Django's command-line utility for administrative tasks.

In development, run it as ``make manage ARGS="..."`` (the project's Python in .venv, DJANGO_DEBUG=1).
A wrong Python, or a wrong or missing setting (config/environment.py's SettingError), is one line on
standard error and exit status 1, not a traceback: the line says what to do.
"""

import os
import sys

USE_THE_VENV = (
    'run it with the project\'s own Python: make manage ARGS="..." (or .venv/bin/python manage.py ...; '
    "make install creates .venv)"
)


def main():
    if sys.version_info < (3, 12):  # noqa: UP036 (this file runs under whatever python is typed)
        sys.exit(
            f"This project needs Python 3.12 or newer (Django 6), not {sys.executable} {sys.version.split()[0]}: "
            + USE_THE_VENV
        )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        from django.core.management import execute_from_command_line
    except ImportError:
        sys.exit(f"Django is not installed for {sys.executable}: " + USE_THE_VENV)

    from config.environment import SettingError

    try:
        execute_from_command_line(sys.argv)
    except SettingError as error:
        sys.exit(f"Configuration error: {error}")


if __name__ == "__main__":
    main()
