"""Governance in the Django admin. Every change goes through the services, so it is versioned and audited; only
governance admins (and superusers) may change anything."""

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse

from audit.actors import Actor
from governance.errors import GovernanceError
from governance.forms import PolicyTermsForm
from governance.models import AgentCostBudget, AgentPolicy, PolicyVersion, QAReview, StopScope, StopSwitch
from governance.selectors import governance_admin
from governance.services import (
    POLICY_FIELDS,
    cost_budget_set,
    policy_publish,
    policy_scope_check,
    policy_terms,
    stop_engage,
    stop_release,
)


class PolicyVersionInline(admin.TabularInline):
    model = PolicyVersion
    extra = 0
    can_delete = False
    fields = ("number", *POLICY_FIELDS, "note", "created_by", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class AgentPolicyForm(forms.ModelForm, PolicyTermsForm):
    """The agent and the terms of the version to publish (pre-filled with the current one)."""

    note = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), help_text="Why this change.")

    class Meta:
        model = AgentPolicy
        fields = ["agent_key", "workflow_key", "step_key", "name"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and "agent_key" in self.fields:  # a view-only user's form has no fields
            for name in ("agent_key", "workflow_key", "step_key"):  # a policy's scope is fixed once it exists
                self.fields[name].disabled = True
            if self.instance.current_version_id:
                self.initial.update(policy_terms(self.instance.current_version))

    def clean(self):
        data = super().clean()
        if not self.instance.pk and data.get("agent_key"):
            try:
                policy_scope_check(
                    agent_key=data["agent_key"],
                    workflow_key=data.get("workflow_key", ""),
                    step_key=data.get("step_key", ""),
                )
            except GovernanceError as exc:
                for name, problem in exc.fields.items():
                    self.add_error(name if name in self.fields else None, problem)
                if not exc.fields:
                    self.add_error(None, exc.message)
        return data

    def terms(self) -> dict:
        data = self.cleaned_data
        return {f: data.get(f) for f in POLICY_FIELDS} | {"qa_sample_rate": data.get("qa_sample_rate") or 0}


@admin.register(AgentPolicy)
class AgentPolicyAdmin(admin.ModelAdmin):
    form = AgentPolicyForm
    list_display = ("agent_key", "scope_label", "name", "current_version")
    list_filter = ("agent_key",)
    inlines = [PolicyVersionInline]
    fieldsets = (
        (None, {"fields": ("agent_key", "name", "note")}),
        (
            "Scope (optional): narrow this policy to one workflow step",
            {"fields": ("workflow_key", "step_key")},
        ),
        (
            "Terms of the new version",
            {
                "fields": (
                    "autonomy",
                    "allowed_actions",
                    "max_amount",
                    "min_confidence",
                    "daily_amount_budget",
                    "hourly_decision_limit",
                    "qa_sample_rate",
                    "rules",
                )
            },
        ),
    )

    def has_add_permission(self, request):
        return governance_admin(request.user)

    def has_change_permission(self, request, obj=None):
        return governance_admin(request.user)

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="scope", ordering="step_key")
    def scope_label(self, obj):
        return f"only at step {obj.scope}" if obj.step_key else "all steps"

    def save_model(self, request, obj, form, change):
        # Saving publishes a new immutable version through the service (versioned and audited), never a raw save.
        try:
            version = policy_publish(
                agent_key=form.cleaned_data.get("agent_key") or obj.agent_key,
                workflow_key=form.cleaned_data.get("workflow_key") or obj.workflow_key,
                step_key=form.cleaned_data.get("step_key") or obj.step_key,
                name=form.cleaned_data.get("name", ""),
                note=form.cleaned_data.get("note", ""),
                actor=Actor.user(request.user),
                **form.terms(),
            )
        except GovernanceError as exc:  # the form validated the fields; a refusal here is rare and says why
            messages.error(request, exc.message)
            raise
        saved = version.policy
        obj.pk, obj.current_version, obj.created_at = saved.pk, version, saved.created_at

    def save_related(self, request, form, formsets, change):
        # versions are published, not edited inline; the admin's change message still reads what the inlines saved
        for formset in formsets:
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []


class StopSwitchForm(forms.ModelForm):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), help_text="Required: why you flip it.")

    class Meta:
        model = StopSwitch
        fields = ["scope", "target", "engaged", "reason"]

    def clean(self):
        data = super().clean()
        if data.get("scope") and data["scope"] != StopScope.GLOBAL and not data.get("target"):
            self.add_error("target", "a workflow or agent stop needs a target key")
        return data


class StopReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}))


@admin.register(StopSwitch)
class StopSwitchAdmin(admin.ModelAdmin):
    form = StopSwitchForm
    list_display = ("scope", "target", "engaged", "reason", "changed_by", "changed_at")
    actions = ["engage_selected", "release_selected"]

    def get_readonly_fields(self, request, obj=None):
        return ("scope", "target", "changed_by", "changed_at") if obj else ("changed_by", "changed_at")

    def has_add_permission(self, request):
        return governance_admin(request.user)

    def has_change_permission(self, request, obj=None):
        return governance_admin(request.user)

    def has_view_permission(self, request, obj=None):
        return request.user.is_staff

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        service = stop_engage if form.cleaned_data["engaged"] else stop_release
        switch = service(
            scope=obj.scope, target=obj.target, reason=form.cleaned_data["reason"], actor=Actor.user(request.user)
        )
        obj.pk = switch.pk
        obj.refresh_from_db()

    def _flip(self, request, queryset, service, verb):
        if "reason" in request.POST:
            form = StopReasonForm(request.POST)
            if form.is_valid():
                for switch in queryset:
                    service(
                        scope=switch.scope,
                        target=switch.target,
                        reason=form.cleaned_data["reason"],
                        actor=Actor.user(request.user),
                    )
                self.message_user(request, f"{queryset.count()} stop switch(es) {verb}.", messages.SUCCESS)
                return None
        else:
            form = StopReasonForm()
        return TemplateResponse(
            request,
            "admin/governance/stopswitch/flip_reason.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Why are these stop switches {verb}?",
                "form": form,
                "queryset": queryset,
                "action": request.POST.get("action"),
                "opts": self.model._meta,
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            },
        )

    @admin.action(description="Engage the selected stop switches (asks for a reason)")
    def engage_selected(self, request, queryset):
        return self._flip(request, queryset, stop_engage, "engaged")

    @admin.action(description="Release the selected stop switches (asks for a reason)")
    def release_selected(self, request, queryset):
        return self._flip(request, queryset, stop_release, "released")


@admin.register(QAReview)
class QAReviewAdmin(admin.ModelAdmin):
    list_display = ("id", "agent_key", "case_id", "step_key", "status", "reviewed_by", "created_at")
    list_filter = ("status", "agent_key")
    readonly_fields = [f.name for f in QAReview._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AgentCostBudgetForm(forms.ModelForm):
    daily_limit = forms.DecimalField(max_digits=12, decimal_places=4, min_value=0)

    class Meta:
        model = AgentCostBudget
        fields = ["agent_key", "daily_limit"]


@admin.register(AgentCostBudget)
class AgentCostBudgetAdmin(admin.ModelAdmin):
    """Daily cost ceilings per agent; saved through the audited service, today's spending is read-only."""

    form = AgentCostBudgetForm
    list_display = ("agent_key", "daily_limit", "spent", "day", "updated_at")
    readonly_fields = ("spent", "day", "updated_at")
    fields = ("agent_key", "daily_limit", "spent", "day", "updated_at")

    def get_readonly_fields(self, request, obj=None):
        return (*self.readonly_fields, "agent_key") if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        saved = cost_budget_set(agent_key=obj.agent_key, daily_limit=obj.daily_limit, actor=Actor.user(request.user))
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        cost_budget_set(agent_key=obj.agent_key, daily_limit=None, actor=Actor.user(request.user))

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # a bulk delete would bypass the audited service
        return actions
