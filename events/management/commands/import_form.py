import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from events.formfile import FormFileError, document_parse, form_import_result

HOW_TO_PUBLISH = (
    "To publish: Review and publish on each tree's page in the admin (Forms → the form → its event trees), "
    "or import again with --publish: import_form {file} --publish"
)


class Command(BaseCommand):
    help = (
        "Import a form with its event trees from a form file (JSON, DESIGN.md section 10). "
        "A form with the same slug is replaced: its settings, fields and event trees; records are kept. "
        "The event trees are written as drafts: what runs stays the live versions until someone publishes "
        "(--publish publishes each tree the file changes at once, as its next version). "
        "A bad file changes nothing, and every problem is listed with its JSON path."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("file", metavar="FILE", help="The form file, or - to read it from standard input.")
        parser.add_argument(
            "--publish",
            action="store_true",
            help="Publish each event tree the file changes as its next version: new submissions run it at once. "
            "Without it the trees are drafts, and the live versions stay live until someone publishes them.",
        )
        parser.add_argument("--note", default="", help="The note of the versions --publish publishes.")

    def handle(self, *args, file, publish=False, note="", **options):
        source = "standard input" if file == "-" else file
        text = self.read(file, options.get("stdin"))
        try:
            result = form_import_result(
                document_parse(text), publish=publish, note=note or f"Imported from {source} (import_form)."
            )
        except FormFileError as exc:
            count = len(exc.problems)
            raise CommandError(
                f"{source}: {count} problem{'s' * (count != 1)}, nothing was imported:\n" + "\n".join(exc.lines())
            ) from None
        self.stdout.write(result.summary(how_to_publish=HOW_TO_PUBLISH.format(file=file)))
        self.stdout.write(f"Public page: /f/{result.form.slug}/")

    def read(self, file, stdin):
        if file == "-":
            return (stdin or sys.stdin).read()
        try:
            return Path(file).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror or exc}") from None
