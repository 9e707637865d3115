from django import forms
from django.contrib import admin, messages

from audit.actors import Actor
from operations.api.clients import api_client_create, api_client_revoke, api_client_rotate
from operations.api.webhooks import webhook_redeliver
from operations.errors import DomainError
from operations.models import (
    ApiClient,
    ApiScope,
    Case,
    Escalation,
    OutboxEntry,
    ReferenceRecord,
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
    list_display = ("idempotency_key", "kind", "amount", "status", "attempts", "created_at", "delivered_at")
    list_filter = ("kind", "status")


@admin.register(ReferenceRecord)
class ReferenceRecordAdmin(ReadOnlyAdmin):
    list_display = ("namespace", "key")
    list_filter = ("namespace",)
    search_fields = ("key",)


# --- REST API -------------------------------------------------------------------------------------------------------


class ApiClientForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple)
    queues = forms.CharField(required=False, help_text="Escalation queues, one per line.", widget=forms.Textarea)

    class Meta:
        model = ApiClient
        fields = ["name", "scopes", "queues", "throttle_rate"]

    def clean_queues(self):
        return [q.strip() for q in self.cleaned_data["queues"].splitlines() if q.strip()]


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
