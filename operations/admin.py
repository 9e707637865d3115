import json

from django import forms
from django.contrib import admin, messages
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from audit.actors import Actor
from operations.agents import versions as agent_versions
from operations.agents.rules import rule_agent_save, rule_agent_try, rule_errors
from operations.api.clients import api_client_create, api_client_revoke, api_client_rotate
from operations.api.webhooks import webhook_redeliver
from operations.errors import DomainError
from operations.models import (
    AgentVersion,
    ApiClient,
    ApiScope,
    Case,
    Escalation,
    LLMEndpoint,
    ModelArtifact,
    OutboxEntry,
    ReferenceRecord,
    RuleAgentVersion,
    Step,
    StepRun,
    WebhookDelivery,
    WebhookSubscription,
    Workflow,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Operational records change only through services (audited); the admin shows them."""

    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class StepInline(admin.TabularInline):
    model = Step
    extra = 0
    fields = ("position", "key", "name", "agent_key", "transitions", "effect", "sla_seconds", "escalation_queue")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Workflow)
class WorkflowAdmin(ReadOnlyAdmin):
    list_display = ("key", "version", "name", "status", "created_at")
    inlines = [StepInline]


@admin.register(Case)
class CaseAdmin(ReadOnlyAdmin):
    list_display = ("reference", "workflow", "status", "wait_reason", "current_step", "created_at", "finished_at")
    list_filter = ("status", "wait_reason", "workflow")
    search_fields = ("reference",)
    list_select_related = ("workflow", "current_step")


@admin.register(StepRun)
class StepRunAdmin(ReadOnlyAdmin):
    list_display = ("case", "step", "attempt", "status", "agent_key", "policy_version", "duration_ms")
    list_filter = ("status", "agent_key")
    list_select_related = ("case", "step")
    raw_id_fields = ("case",)


@admin.register(Escalation)
class EscalationAdmin(ReadOnlyAdmin):
    list_display = ("id", "case", "step", "reason", "amount", "queue", "status", "resolution", "sla_deadline")
    list_filter = ("status", "reason", "queue", "resolution")
    list_select_related = ("case", "step")


@admin.register(OutboxEntry)
class OutboxEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "idempotency_key",
        "kind",
        "amount",
        "status",
        "attempts",
        "needs_attention",
        "next_attempt_at",
        "created_at",
        "delivered_at",
    )
    list_filter = ("needs_attention", "kind", "status")


@admin.register(ReferenceRecord)
class ReferenceRecordAdmin(ReadOnlyAdmin):
    list_display = ("namespace", "key")
    list_filter = ("namespace",)
    search_fields = ("key",)


# --- agents: rule agents (with a test panel), versions and their rollout, trained models ---------------------------


RULES_HELP = (
    'An ordered JSON list of rules, e.g. [{"id": "small-glass", "when": "payload.claim_type == \'auto_glass\' && '
    'double(payload.amount_claimed) < 500.0", "outcome": "assessed", "action": "estimate", "amount": '
    '"double(payload.amount_claimed) - double(context.deductible)", "confidence": 0.9}]. when, amount and confidence '
    "are CEL expressions over payload, context and case; the first rule that holds decides."
)


class RuleAgentVersionForm(forms.ModelForm):
    rules = forms.JSONField(help_text=RULES_HELP, widget=forms.Textarea(attrs={"rows": 16, "cols": 100}))

    class Meta:
        model = RuleAgentVersion
        fields = ("agent_key", "version", "description", "rules")

    def clean_rules(self):
        rules = self.cleaned_data["rules"]
        if errors := rule_errors(rules):
            raise forms.ValidationError([f"{where}: {message}" for where, message in errors.items()])
        return rules


class TryRulesForm(forms.Form):
    payload = forms.JSONField(widget=forms.Textarea(attrs={"rows": 12, "cols": 100}))
    context = forms.JSONField(required=False, widget=forms.Textarea(attrs={"rows": 6, "cols": 100}))


@admin.register(RuleAgentVersion)
class RuleAgentVersionAdmin(admin.ModelAdmin):
    form = RuleAgentVersionForm
    list_display = ("agent_key", "version", "status", "created_by", "created_at", "test_panel")
    list_filter = ("status", "agent_key")

    def get_readonly_fields(self, request, obj=None):
        # a saved version never changes: a new one is saved instead, and goes live only through the rollout
        if obj is not None:
            return ("agent_key", "version", "description", "rules_json", "status", "created_by", "test_panel")
        return ()

    def get_fields(self, request, obj=None):
        if obj is not None:
            return self.get_readonly_fields(request, obj)
        return ("agent_key", "version", "description", "rules")

    @admin.display(description="rules")
    def rules_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.rules, indent=2, ensure_ascii=False))

    @admin.display(description="test panel")
    def test_panel(self, obj):
        return format_html(
            '<a href="{}">try it on a payload</a>', reverse("admin:operations_ruleagent_try", args=[obj.pk])
        )

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        saved = rule_agent_save(
            agent_key=obj.agent_key,
            version=obj.version,
            rules=obj.rules,
            description=obj.description,
            actor=Actor.user(request.user),
        )
        obj.pk, obj.status, obj.created_at = saved.pk, saved.status, saved.created_at

    def get_urls(self):
        return [
            path("<int:pk>/try/", self.admin_site.admin_view(self.try_view), name="operations_ruleagent_try"),
            *super().get_urls(),
        ]

    def try_view(self, request, pk: int):
        version = get_object_or_404(RuleAgentVersion, pk=pk)
        form = TryRulesForm(request.POST or None)
        proposal, error = None, ""
        if request.method == "POST" and form.is_valid():
            try:
                proposal = rule_agent_try(
                    rules=version.rules, payload=form.cleaned_data["payload"], context=form.cleaned_data["context"]
                )
            except DomainError as exc:
                error = exc.message
        context = {
            **self.admin_site.each_context(request),
            "title": f"Try {version}",
            "version": version,
            "form": form,
            "proposal": proposal.as_dict() if proposal else None,
            "error": error,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/operations/ruleagentversion/try.html", context)


class CanaryForm(forms.Form):
    share = forms.DecimalField(min_value=0, max_value=1, decimal_places=3, initial="0.1")


@admin.register(AgentVersion)
class AgentVersionAdmin(ReadOnlyAdmin):
    list_display = ("agent_key", "version", "kind", "source", "status", "canary_share", "updated_at")
    list_filter = ("status", "kind", "agent_key")
    actions = ["replay_last_50", "canary_10", "promote", "rollback"]

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser or request.user.has_perm("operations.change_agentversion")

    def _each(self, request, queryset, fn, done: str):
        for row in queryset:
            try:
                fn(agent_key=row.agent_key, version=row.version, actor=Actor.user(request.user))
            except DomainError as exc:
                self.message_user(request, f"{row}: {exc.message}", level=messages.ERROR)
            else:
                self.message_user(request, f"{row.agent_key} {row.version}: {done}")

    @admin.action(description="Replay on the last 50 closed cases")
    def replay_last_50(self, request, queryset):
        self._each(request, queryset, lambda **kw: agent_versions.agent_replay(last=50, **kw), "replayed")

    @admin.action(description="Start a 10% canary")
    def canary_10(self, request, queryset):
        self._each(
            request,
            queryset,
            lambda **kw: agent_versions.agent_version_start_canary(share="0.1", **kw),
            "canary on 10% of new cases",
        )

    @admin.action(description="Promote to live")
    def promote(self, request, queryset):
        self._each(request, queryset, agent_versions.agent_version_promote, "live")

    @admin.action(description="Roll back (take out of traffic)")
    def rollback(self, request, queryset):
        self._each(request, queryset, agent_versions.agent_version_rollback, "rolled back")


@admin.register(ModelArtifact)
class ModelArtifactAdmin(ReadOnlyAdmin):
    list_display = ("agent_key", "version", "training_rows", "training_digest", "created_at")
    list_filter = ("agent_key",)


# --- REST API -------------------------------------------------------------------------------------------------------


class ApiClientForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple)
    queues = forms.CharField(required=False, help_text="Escalation queues, one per line.", widget=forms.Textarea)

    class Meta:
        model = ApiClient
        fields = ["name", "scopes", "queues", "throttle_rate"]

    def clean_queues(self):
        return [q.strip() for q in self.cleaned_data["queues"].splitlines() if q.strip()]

    def clean(self):
        from operations.api.clients import api_client_errors

        data = super().clean()
        problems = api_client_errors(
            data.get("name", ""),
            list(data.get("scopes") or []),
            data.get("queues") or [],
            data.get("throttle_rate", ""),
        )
        for field, message in problems.items():
            if field in self.fields and field not in self.errors:
                self.add_error(field, message)
        return data


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    """Created, rotated and revoked through the services (audited); the key is shown once, in a message."""

    list_display = ("name", "key_prefix", "scopes", "queues", "active", "created_at", "rotated_at", "revoked_at")
    list_filter = ("active",)
    readonly_fields = ("key_prefix", "active", "created_at", "rotated_at", "revoked_at")
    actions = ["rotate_keys", "revoke"]

    def get_form(self, request, obj=None, **kwargs):
        return ApiClientForm if obj is None else super().get_form(request, obj, **kwargs)

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the client's cases keep their owner

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        client, key = api_client_create(
            name=data["name"],
            scopes=list(data["scopes"]),
            queues=data["queues"],
            throttle_rate=data.get("throttle_rate", ""),
            actor=Actor.user(request.user),
        )
        obj.pk = client.pk
        messages.warning(request, f"The key of {client.name}, shown this once: {key}")

    @admin.action(description="Rotate the key (shown once)")
    def rotate_keys(self, request, queryset):
        for client in queryset:
            try:
                client, key = api_client_rotate(client_id=client.pk, actor=Actor.user(request.user))
            except DomainError as exc:
                messages.error(request, f"{client.name}: {exc.message}")
                continue
            messages.warning(request, f"The new key of {client.name}, shown this once: {key}")

    @admin.action(description="Revoke (the key stops working at once)")
    def revoke(self, request, queryset):
        for client in queryset:
            api_client_revoke(client_id=client.pk, actor=Actor.user(request.user))
        messages.success(request, f"{queryset.count()} client(s) revoked.")


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(ReadOnlyAdmin):
    list_display = ("id", "client", "url", "events", "active", "created_at")
    list_filter = ("active", "client")
    exclude = ("secret",)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("id", "event_type", "event_id", "subscription", "status", "attempts", "next_attempt_at")
    list_filter = ("status", "event_type")
    list_select_related = ("subscription", "subscription__client")
    actions = ["redeliver"]

    @admin.action(description="Redeliver (same event id)")
    def redeliver(self, request, queryset):
        for delivery in queryset:
            try:
                webhook_redeliver(delivery_id=delivery.pk, actor=Actor.user(request.user))
            except DomainError as exc:
                messages.error(request, f"delivery {delivery.pk}: {exc.message}")


class LLMEndpointForm(forms.ModelForm):
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only: leave empty to keep the current key.",
    )

    timeout = forms.FloatField(required=False, min_value=0.5, max_value=60, help_text="Seconds per call (0.5 to 60).")
    price_in = forms.DecimalField(required=False, max_digits=10, decimal_places=6, min_value=0)
    price_out = forms.DecimalField(required=False, max_digits=10, decimal_places=6, min_value=0)

    class Meta:
        model = LLMEndpoint
        fields = ("active", "base_url", "model", "api_key", "timeout", "price_in", "price_out")

    def clean(self):
        from operations.agents.llm import llm_endpoint_errors

        data = super().clean()
        for field, message in llm_endpoint_errors(base_url=data.get("base_url"), model=data.get("model")).items():
            if field not in self.errors:
                self.add_error(field, message)
        return data


@admin.register(LLMEndpoint)
class LLMEndpointAdmin(admin.ModelAdmin):
    """The LLM agents' endpoint; saved through the service, so it is validated and audited."""

    form = LLMEndpointForm
    list_display = ("__str__", "active", "updated_by", "updated_at")

    def has_add_permission(self, request):
        return not LLMEndpoint.objects.exists() and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        from operations.agents.llm import llm_endpoint_configure

        data = form.cleaned_data
        try:
            saved = llm_endpoint_configure(
                actor=Actor.user(request.user),
                active=data["active"],
                base_url=data["base_url"],
                model=data["model"],
                api_key=data["api_key"] or None,
                timeout=data["timeout"],
                price_in=data["price_in"],
                price_out=data["price_out"],
            )
        except DomainError as exc:
            messages.error(request, f"{exc.message}: {exc.fields}")
            return
        obj.pk = saved.pk
