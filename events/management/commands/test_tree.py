import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from events.models import RECORD_UPDATE, TreeVersion, form_model, record_model
from events.testrun import TestRunError, tree_test_run


class Command(BaseCommand):
    help = (
        "Test-run a form's event tree against a submission: a past record's data (--record TOKEN) or data "
        "typed in (--data JSON). The real engine runs it, but nothing is sent, queued or kept: emails and HTTP "
        "requests are captured (requests get canned responses, see --canned), delays and backoffs are "
        "fast-forwarded, and the record is left unchanged. Runs the draft unless --version N is given."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        # --version N names a tree's version here: it replaces the option that prints Django's version.
        kwargs.setdefault("conflict_handler", "resolve")
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("slug", metavar="FORM", help="The slug of the form.")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--record", metavar="TOKEN", help="Use the data and flags of this record (its token).")
        source.add_argument(
            "--data", metavar="JSON", help='The submission as a JSON object, e.g. \'{"email": "a@b.c"}\'.'
        )
        parser.add_argument(
            "--event", default=RECORD_UPDATE, help=f"The event whose tree runs (default: {RECORD_UPDATE})."
        )
        parser.add_argument("--version", type=int, metavar="N", help="Run published version N (default: the draft).")
        parser.add_argument(
            "--canned",
            metavar="JSON|FILE",
            help='Canned answers per node name, as JSON or a file: {"crm": {"status": 201, "json": {"id": 7}}, '
            '"book": {"callback": {"status": "FAILURE"}}}. Default: 200 {} and a SUCCESS callback.',
        )
        parser.add_argument("--json", action="store_true", help="Print the whole result as JSON.")

    def handle(self, *args, slug, record=None, data=None, event=RECORD_UPDATE, version=None, canned=None, **options):
        Form = form_model()
        form = Form.objects.filter(slug=slug).first()
        if form is None:
            known = ", ".join(Form.objects.order_by("slug").values_list("slug", flat=True)) or "none"
            raise CommandError(f"No form has the slug “{slug}”. Known slugs: {known}.")
        row = None
        if record is not None:
            row = record_model().objects.filter(form=form, token=record).first()
            if row is None:
                raise CommandError(f"Form “{slug}” has no record with the token “{record}”.")
        else:
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise CommandError(f"--data is not JSON: {exc}") from None
        chosen = None
        if version is not None:
            chosen = TreeVersion.objects.of_tree(form, event).filter(number=version).first()
            if chosen is None:
                numbers = ", ".join(
                    map(str, sorted(TreeVersion.objects.of_tree(form, event).values_list("number", flat=True)))
                )
                raise CommandError(
                    f"The {event} tree of “{slug}” has no version {version} (its versions: {numbers or 'none'})."
                )
        try:
            result = tree_test_run(
                form=form, event=event, version=chosen, record=row, data=data, canned=self.canned(canned)
            )
        except TestRunError as exc:
            raise CommandError("\n".join(f"{path}: {message}" for path, message in exc.problems)) from None
        if options["json"]:
            self.stdout.write(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        else:
            self.stdout.write(result_text(result))
        if result.status != "complete":
            sys.exit(1)

    def canned(self, value):
        if not value:
            return None
        if value.lstrip().startswith("{"):
            return value
        try:
            return Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot read --canned {value}: {exc.strerror or exc}") from None


def result_text(result):
    """A test run as a reader wants it in a terminal: the timeline, what would be sent, how it ends."""

    def at(moment):
        offset = result.offset(moment)
        if offset is None:
            return ""
        return "+0s" if offset == 0 else f"+{_duration(offset)}"

    lines = [
        f"Test run of {result.form} ({result.event}, {result.version}) — nothing was sent, queued or kept.",
        "",
    ]
    for run in result.runs:
        title = "Run" if run.index == 0 else f"Run {run.index} (started by a step of run {run.parent_index})"
        lines.append(f"{title}: {run.event} — {run.status}{': ' + run.error if run.error else ''}")
        for step in run.steps:
            indent = "  " * (step.depth + 1) + ("on error: " if step.branch == "on_error" else "")
            when = at(step.finished_at or step.due_at)
            attempts = f", {step.attempt} attempts" if step.attempt > 1 else ""
            line = f"{indent}{step.label or step.name or step.type} [{step.type}] {step.status} {when}{attempts}"
            if step.phase == "request":
                line += " (in the request)"
            lines.append(line.rstrip())
            if step.error:
                lines.append(f"{indent}  error: {step.error}")
            if step.child_run is not None:
                lines.append(f"{indent}  started run {step.child_run}")
    lines.append("")
    lines.append(f"Emails that would be sent: {len(result.emails)}")
    for email in result.emails:
        lines.append(f"  {at(email.at)} to {', '.join(email.to)}: {email.subject}")
    lines.append(f"HTTP requests that would be made: {len(result.http_calls)}")
    for call in result.http_calls:
        answer = call.response.get("error") or call.response.get("status")
        lines.append(f"  {at(call.at)} {call.method} {call.url} → {answer}{'' if call.canned else ' (default answer)'}")
    changed = result.changed_data
    lines.append(
        "Record fields changed: " + (", ".join(f"{k}: {b!r} → {a!r}" for k, (b, a) in changed.items()) or "none")
    )
    lines.append("Flags: " + (", ".join(f"{k}={v}" for k, v in sorted(result.flags.items())) or "none"))
    lines.append(
        f"Waiting page: {result.waiting.state}" + (f" — {result.waiting.message}" if result.waiting.message else "")
    )
    if result.unused_canned:
        lines.append(f"Canned answers that no step used: {', '.join(result.unused_canned)}")
    if result.stopped:
        lines.append(result.stopped)
    return "\n".join(lines)


def _duration(seconds):
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{seconds}s" if seconds or not any(parts) else "")
    return "".join(parts)
