from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from operations import roles
from operations.models import EFFECT_FAILED_REASON, Resolution
from operations.resolution_codes import reason_code_choices


class ResolveForm(forms.Form):
    resolution = forms.ChoiceField(choices=Resolution.choices)
    reason_code = forms.ChoiceField(choices=[("", "— choose a reason —"), *reason_code_choices()])
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=4000)
    amount = forms.DecimalField(required=False, max_digits=14, decimal_places=2, min_value=0)
    outcome = forms.CharField(required=False, max_length=100)
    instruction = forms.CharField(required=False, max_length=2000)

    def __init__(self, *args, escalation=None, **kwargs):
        super().__init__(*args, **kwargs)
        if escalation is not None and escalation.reason == EFFECT_FAILED_REASON:
            # a failed payment or letter was approved already: it can be sent again (retry) or closed, not approved
            self.fields["resolution"].choices = [
                (value, label)
                for value, label in Resolution.choices
                if value in (Resolution.RETRY, Resolution.REJECT, Resolution.CANCEL_CASE)
            ]


class ReassignForm(forms.Form):
    """Move escalations to another queue and/or hand them to a person."""

    queue = forms.ChoiceField(required=False)
    assignee = forms.ModelChoiceField(queryset=get_user_model().objects.none(), required=False)
    note = forms.CharField(max_length=2000)

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        non_queues = [r for r in roles.ROLES if r != roles.SENIOR_QUEUE]
        queues = Group.objects.exclude(name__in=non_queues).order_by("name").values_list("name", flat=True)
        self.fields["queue"].choices = [("", "— keep the queue —")] + [(q, q) for q in queues]
        self.fields["assignee"].queryset = (
            get_user_model().objects.filter(groups__name__in=roles.ACTING_ROLES, is_active=True).distinct()
        )
        self.fields["assignee"].empty_label = "— nobody (unclaimed) —"
