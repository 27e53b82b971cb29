import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_wsgi_application()

from events.middleware import ChunkedBodies  # noqa: E402 (needs the settings above)

# Bodies sent without Content-Length (chunked) reach the API; see ChunkedBodies.
application = ChunkedBodies(django_application)
