"""Reading settings from the environment, and the one error a wrong or missing setting raises.

Kept apart from config/settings.py so that manage.py and config/wsgi.py can catch
``SettingError`` (and print its one line instead of a traceback) without importing the settings
that raised it.
"""

import os

from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


class SettingError(ImproperlyConfigured):
    """A setting from the environment is missing or wrong. The message names the variable and says what to do."""


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    word = value.strip().lower()
    if word not in TRUE_WORDS | FALSE_WORDS:
        raise SettingError(f"{name} is {value!r}: use 1 or 0 (or true/false, yes/no, on/off).")
    return word in TRUE_WORDS


def env_list(name, default=""):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_int(name, default):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return int(default)
    try:
        return int(value)
    except ValueError:
        raise SettingError(f"{name} is {value!r}: it must be a whole number (the default is {default}).") from None


def env_float(name, default):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return float(default)
    try:
        return float(value)
    except ValueError:
        raise SettingError(f"{name} is {value!r}: it must be a number (the default is {default}).") from None
