from django import forms

from operations.models import Resolution


class ResolveForm(forms.Form):
    resolution = forms.ChoiceField(choices=Resolution.choices)
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=4000)
    amount = forms.DecimalField(required=False, max_digits=14, decimal_places=2, min_value=0)
    outcome = forms.CharField(required=False, max_length=100)
    instruction = forms.CharField(required=False, max_length=2000)
