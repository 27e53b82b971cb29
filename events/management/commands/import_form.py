import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from events.formfile import FormFileError, document_parse, form_import_result


class Command(BaseCommand):
    help = (
        "Import a form with its event trees from a form file (JSON, DESIGN.md section 10). "
        "A form with the same slug is replaced: its settings, fields and event trees; records are kept. "
        "A bad file changes nothing, and every problem is listed with its JSON path."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("file", metavar="FILE", help="The form file, or - to read it from standard input.")

    def handle(self, *args, file, **options):
        source = "standard input" if file == "-" else file
        text = self.read(file, options.get("stdin"))
        try:
            result = form_import_result(document_parse(text))
        except FormFileError as exc:
            count = len(exc.problems)
            raise CommandError(
                f"{source}: {count} problem{'s' * (count != 1)}, nothing was imported:\n" + "\n".join(exc.lines())
            ) from None
        self.stdout.write(result.summary())
        self.stdout.write(f"Public page: /f/{result.form.slug}/")

    def read(self, file, stdin):
        if file == "-":
            return (stdin or sys.stdin).read()
        try:
            return Path(file).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror or exc}") from None
