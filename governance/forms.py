"""Forms for governance pages and the admin: they parse and validate input; services decide."""

import json

from django import forms

from governance.models import AutonomyLevel, StopScope
from governance.rules import rule_errors


class RulesField(forms.CharField):
    """A JSON list of rules ({id, expression, reason_code, message}); every CEL expression is checked here."""

    widget = forms.Textarea(attrs={"rows": 8, "class": "mono"})

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return json.dumps(list(value), indent=2)
        return value

    def to_python(self, value):
        value = super().to_python(value)
        if not value or not value.strip():
            return []
        try:
            rules = json.loads(value)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from exc
        if errors := rule_errors(rules):
            raise forms.ValidationError([f"{k}: {v}" for k, v in errors.items()])
        return rules


class ActionsField(forms.CharField):
    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value):
        value = super().to_python(value) or ""
        return [a.strip() for a in value.replace("\n", ",").split(",") if a.strip()]


class PolicyTermsForm(forms.Form):
    """The terms of a policy version (for the admin's publish form and the portal's backtest draft)."""

    autonomy = forms.ChoiceField(choices=AutonomyLevel.choices, initial=AutonomyLevel.BOUNDED)
    allowed_actions = ActionsField(required=False, help_text="Comma-separated; empty allows every action.")
    max_amount = forms.DecimalField(required=False, max_digits=14, decimal_places=2, min_value=0)
    min_confidence = forms.DecimalField(required=False, max_digits=4, decimal_places=3, min_value=0, max_value=1)
    daily_amount_budget = forms.DecimalField(required=False, max_digits=16, decimal_places=2, min_value=0)
    hourly_decision_limit = forms.IntegerField(required=False, min_value=0)
    qa_sample_rate = forms.DecimalField(required=False, max_digits=4, decimal_places=3, min_value=0, max_value=1)
    rules = RulesField(
        required=False,
        help_text='JSON list of {"id", "expression" (CEL over proposal and case), "reason_code", "message"}; '
        "an expression must be true for the proposal to pass.",
    )

    def terms(self) -> dict:
        data = dict(self.cleaned_data)
        data["qa_sample_rate"] = data.get("qa_sample_rate") or 0
        return {k: data[k] for k in self.base_fields}


class BacktestForm(PolicyTermsForm):
    agent_key = forms.ChoiceField(choices=())
    since = forms.DateTimeField(help_text="UTC, e.g. 2026-11-01 00:00")
    until = forms.DateTimeField(help_text="UTC")

    def __init__(self, *args, agents=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent_key"].choices = [(a, a) for a in agents]
        self.order_fields(["agent_key", "since", "until"])

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise forms.ValidationError("'since' must be before 'until'")
        return data

    def terms(self) -> dict:
        return {k: self.cleaned_data.get(k) for k in PolicyTermsForm.base_fields}


class StopForm(forms.Form):
    scope = forms.ChoiceField(choices=StopScope.choices)
    target = forms.CharField(required=False, max_length=100)
    reason = forms.CharField(max_length=2000, widget=forms.TextInput)
    engage = forms.BooleanField(required=False, help_text="checked: engage; unchecked: release")


class QADecideForm(forms.Form):
    agreed = forms.TypedChoiceField(choices=[("1", "Agree"), ("0", "Disagree")], coerce=lambda v: v == "1")
    note = forms.CharField(max_length=4000)
