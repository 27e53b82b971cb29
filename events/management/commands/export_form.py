from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from events.formfile import form_export_json
from events.models import form_model


class Command(BaseCommand):
    help = "Export a form with its fields, waiting page and event trees as a form file (JSON) on standard output."

    def add_arguments(self, parser):
        parser.add_argument("slug", metavar="SLUG", help="The slug of the form to export.")
        parser.add_argument("--output", "-o", metavar="FILE", help="Write the JSON to FILE instead of standard output.")

    def handle(self, *args, slug, output=None, **options):
        Form = form_model()
        form = Form.objects.filter(slug=slug).first()
        if form is None:
            known = ", ".join(Form.objects.order_by("slug").values_list("slug", flat=True)) or "none"
            raise CommandError(f"No form has the slug “{slug}”. Known slugs: {known}.")
        text = form_export_json(form)
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror or exc}") from None
        self.stdout.write(f"Exported form “{slug}” to {output}.")
