"""Console forms (Flask-WTF: every POST form carries a CSRF token). Search and filter forms are
GET forms without one: they change nothing."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import (
    DataRequired,
    EqualTo,
    InputRequired,
    Length,
    Optional,
    Regexp,
    ValidationError,
)
from wtforms.widgets import HiddenInput

from portal.admin.auth import MIN_PASSWORD_LENGTH
from portal.models import OrderState, Role

EMAIL = Regexp(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", message="Enter an email address.")
ROLE_CHOICES = [SelectChoice(str(role)) for role in Role]
CONFIRM = "Tick the box to confirm."
PASSWORD_LENGTH = Length(
    min=MIN_PASSWORD_LENGTH,
    max=1024,
    message=f"Use at least {MIN_PASSWORD_LENGTH} characters (and at most 1024).",
)


class LoginForm(FlaskForm):
    email = StringField("Email", validators=[DataRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class SignOutForm(FlaskForm):
    """Only the CSRF token: signing out is a POST so another site cannot do it for you."""


class OrderSearchForm(FlaskForm):
    class Meta:
        csrf = False

    platform = SelectField("Platform", choices=[], validators=[Optional()])
    platform_ref = StringField(
        "Purchase, order or learner id", validators=[Optional(), Length(max=190)]
    )
    email = StringField("Email (platform’s or paid with)", validators=[Optional(), Length(max=320)])
    stripe_id = StringField(
        "Stripe session or payment intent", validators=[Optional(), Length(max=255)]
    )
    state = SelectField(
        "State",
        choices=[SelectChoice("", "any")] + [SelectChoice(str(s)) for s in OrderState],
        validators=[Optional()],
    )
    date_from = DateField("Created from", validators=[Optional()])
    date_to = DateField("Created to", validators=[Optional()])

    def validate_date_to(self, field):
        if field.data and self.date_from.data and field.data < self.date_from.data:
            raise ValidationError("The end date is before the start date.")


class ConfirmForm(FlaskForm):
    confirm = BooleanField(
        "I have checked the order and want to do this", validators=[DataRequired(message=CONFIRM)]
    )


class ReasonForm(ConfirmForm):
    reason = TextAreaField(
        "Reason (kept on the order's timeline and in the audit log)",
        validators=[DataRequired(), Length(min=3, max=500)],
    )


class RefundForm(ReasonForm):
    amount = StringField("Amount to refund", validators=[DataRequired(), Length(max=32)])
    # What was refunded when the page was drawn: a second submit of the same page (a double
    # click after the first finished) is refused instead of refunding again.
    refunded_before = IntegerField(widget=HiddenInput(), validators=[InputRequired()])


class CreateUserForm(FlaskForm):
    email = StringField("Email", validators=[DataRequired(), EMAIL, Length(max=320)])
    role = SelectField("Role", choices=ROLE_CHOICES)
    password = PasswordField(
        "Password",
        validators=[
            Optional(),
            PASSWORD_LENGTH,
        ],
        description="Leave empty for a single sign-on user.",
    )
    password_again = PasswordField(
        "Password again", validators=[EqualTo("password", message="The passwords differ.")]
    )


class UpdateUserForm(FlaskForm):
    role = SelectField("Role", choices=ROLE_CHOICES)
    active = BooleanField("Active")
    password = PasswordField("New password", validators=[Optional(), PASSWORD_LENGTH])


class AuditFilterForm(FlaskForm):
    class Meta:
        csrf = False

    actor = StringField("Who (email)", validators=[Optional(), Length(max=320)])
    action = SelectField("Action", choices=[], validators=[Optional()])
