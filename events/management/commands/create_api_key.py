from django.core.management.base import BaseCommand, CommandError

from events.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key and print it once. Only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Who or what the key is for, e.g. 'billing-service'.")

    def handle(self, *args, name, **options):
        name = name.strip()
        if not name:
            raise CommandError("Give the key a name.")
        key, raw = ApiKey.issue(name=name)
        self.stdout.write(raw)
        self.stderr.write(
            f"Created API key “{key.name}” ({key.prefix}…). It is shown only now: store it somewhere safe. "
            "Send it as 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'."
        )
