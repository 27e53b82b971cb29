import os
import sys

from django.core.asgi import get_asgi_application

from config.environment import SettingError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
try:
    application = get_asgi_application()
except SettingError as error:  # one line, not a traceback (as config/wsgi.py)
    print(f"Configuration error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(4) from None
