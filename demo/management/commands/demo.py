from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from events.formfile import FormFileError, document_parse, form_import_result

DEMO_FILE = Path(__file__).resolve().parents[2] / "booking.json"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"


class Command(BaseCommand):
    help = (
        "Load the demo booking form (demo/booking.json) and create a development admin account "
        "admin/admin if there is none. Safe to run again: the form is re-imported as it is in the file."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--force",
            action="store_true",
            help="Run although DEBUG is off (the admin account's password is “admin”: never on a public server).",
        )
        parser.add_argument(
            "--no-next-steps",
            action="store_true",
            help="Leave out the addresses to open and how to start the server (make run prints them itself).",
        )

    def handle(self, *args, force=False, no_next_steps=False, **options):
        if not settings.DEBUG and not force:
            raise CommandError(
                "Refusing to load the demo: DEBUG is off, and the demo creates an admin account whose "
                "password is “admin”. Set DJANGO_DEBUG=1 for local development, or pass --force."
            )
        try:
            text = DEMO_FILE.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read the demo form file {DEMO_FILE}: {exc.strerror or exc}") from None
        try:
            document = document_parse(text)
            with transaction.atomic():
                # Published at once: the demo form runs its trees as soon as it is loaded.
                result = form_import_result(document, publish=True, note="Loaded by the demo command.")
                admin_created = self.admin_ensure()
        except FormFileError as exc:
            raise CommandError(f"{DEMO_FILE} is not a valid form file:\n" + "\n".join(exc.lines())) from None

        self.stdout.write(result.summary())
        if admin_created:
            self.stdout.write(f"Created the development admin account: {ADMIN_USERNAME} / {ADMIN_PASSWORD}")
        else:
            self.stdout.write(f"The admin account “{ADMIN_USERNAME}” already exists; its password was left as it is.")
        if no_next_steps:
            return
        # The address the site is served at (make run sets it from HOST and PORT), read at call time.
        base_url = settings.EVENTS_PUBLIC_URL.rstrip("/")
        self.stdout.write(
            "\n"
            f"  The form:  {base_url}/f/{result.form.slug}/\n"
            f"  Admin:     {base_url}/admin/  (log in as {ADMIN_USERNAME} / {ADMIN_PASSWORD})\n"
            "\n"
            "Start the web server and a worker with `make run` (background steps need the worker)."
        )

    def admin_ensure(self):
        """Create admin/admin unless a user of that name exists. True if it was created."""
        User = get_user_model()
        if User.objects.filter(**{User.USERNAME_FIELD: ADMIN_USERNAME}).exists():
            return False
        User.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", ADMIN_PASSWORD)
        return True
