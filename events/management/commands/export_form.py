import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from events.formfile import export_notes, form_export_json
from events.formfile import schema as form_file_schema
from events.models import RECORD_UPDATE, form_model


class Command(BaseCommand):
    help = (
        "Export a form with its fields, waiting page and event trees as a form file (JSON) on standard output; "
        "with --schema, the JSON Schema of the form file format instead. Each tree is written as its live "
        "version (the latest published); --version N chooses another version of one tree, --draft the drafts."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        # --version N names a tree's version here: it replaces the option that prints Django's version.
        kwargs.setdefault("conflict_handler", "resolve")
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("slug", metavar="SLUG", nargs="?", help="The slug of the form to export.")
        parser.add_argument("--output", "-o", metavar="FILE", help="Write the JSON to FILE instead of standard output.")
        parser.add_argument(
            "--schema",
            action="store_true",
            help="Print the JSON Schema of the form file format (for editors and CI), not a form.",
        )
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--version",
            type=int,
            metavar="N",
            help="Write version N of the tree --event names (its other trees: their live versions).",
        )
        which.add_argument(
            "--draft",
            action="store_true",
            help="Write the drafts (the trees as the builder shows them, published or not).",
        )
        parser.add_argument(
            "--event",
            default=RECORD_UPDATE,
            help=f"The tree --version N is a version of (default: {RECORD_UPDATE}).",
        )

    def handle(
        self,
        *args,
        slug=None,
        output=None,
        schema=False,
        version=None,
        draft=False,
        event=RECORD_UPDATE,
        **options,
    ):
        if schema:
            return self.write(
                json.dumps(form_file_schema(), indent=2, ensure_ascii=False) + "\n", output, "the form file schema"
            )
        if not slug:
            raise CommandError("Give the slug of the form to export (or --schema).")
        Form = form_model()
        form = Form.objects.filter(slug=slug).first()
        if form is None:
            known = ", ".join(Form.objects.order_by("slug").values_list("slug", flat=True)) or "none"
            raise CommandError(f"No form has the slug “{slug}”. Known slugs: {known}.")
        versions = {event: version} if version is not None else None
        try:
            text = form_export_json(form, draft=draft, versions=versions)
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        for note in export_notes(form, draft=draft, versions=versions):
            self.stderr.write(note)
        self.write(text, output, f"form “{slug}”")

    def write(self, text, output, what):
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror or exc}") from None
        self.stdout.write(f"Exported {what} to {output}.")
