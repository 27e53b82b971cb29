from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.core.validators import validate_email

from ..templating import TemplateCharField, TemplateTextField
from .base import ConfigForm, NodeError, NodeType
from .registry import register


class SendEmailConfig(ConfigForm):
    to = TemplateCharField(
        label="To", help_text="Addresses separated by commas; templates allowed: {{ record.email }}."
    )
    subject = TemplateCharField(label="Subject", max_length=300)
    body = TemplateTextField(label="Body")
    from_email = TemplateCharField(label="From", required=False, help_text="Default: DEFAULT_FROM_EMAIL.")


@register
class SendEmail(NodeType):
    """Renders to, subject and body, and sends one email through Django's mail framework.

    Config: ``to`` (comma-separated, templated), ``subject``, ``body``, optional ``from_email``.
    Output: ``{"to": [...], "subject": ...}``.
    """

    key = "send_email"
    label = "Send email"
    config_form = SendEmailConfig

    @classmethod
    def describe(cls, config):
        return f"to {config.get('to')}: {config.get('subject')}"

    def execute(self, ctx):
        recipients = [address.strip() for address in ctx.render(ctx.config["to"]).split(",") if address.strip()]
        if not recipients:
            raise NodeError("The email has no recipient (the “to” template rendered empty).")
        for address in recipients:
            try:
                validate_email(address)
            except ValidationError:
                raise NodeError(f"“{address}” is not a valid email address.") from None
        subject = " ".join(ctx.render(ctx.config["subject"]).split())
        body = ctx.render(ctx.config["body"])
        sender = ctx.render(ctx.config.get("from_email") or "") or settings.DEFAULT_FROM_EMAIL
        ctx.send_mail(EmailMessage(subject=subject, body=body, from_email=sender, to=recipients))
        ctx.log(f"email “{subject}” sent to {', '.join(recipients)}")
        return {"to": recipients, "subject": subject}
