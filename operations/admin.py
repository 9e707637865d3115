from django.contrib import admin

from operations.models import Case, Escalation, OutboxEntry, ReferenceRecord, Step, StepRun, Workflow


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
