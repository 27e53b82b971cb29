import os
import sys

from django.core.wsgi import get_wsgi_application

from config.environment import SettingError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
try:
    django_application = get_wsgi_application()
except SettingError as error:
    # One line instead of a traceback in every worker's log. Exit status 4 is gunicorn's "App failed
    # to load": its master stops instead of starting worker after worker that fail the same way.
    print(f"Configuration error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(4) from None

from events.middleware import ChunkedBodies  # noqa: E402 (needs the settings above)

# Bodies sent without Content-Length (chunked) reach the API; see ChunkedBodies.
application = ChunkedBodies(django_application)
