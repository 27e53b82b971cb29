"""The demo: the booking form (booking.json), the ``demo`` command and a stand-in external service.

Not the product: it is installed only in development or with EVENTS_DEMO_SERVICE
(config/settings.py), and nothing in ``forms_app`` or ``events`` imports it.
"""
