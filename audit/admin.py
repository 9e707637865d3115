from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only, even for superusers: the audit trail is append-only."""

    list_display = (
        "id",
        "occurred_at",
        "action",
        "actor_type",
        "actor_label",
        "subject_type",
        "subject_label",
        "seal_seq",
    )
    list_filter = ("action", "actor_type", "subject_type")
    search_fields = ("subject_id", "subject_label", "actor_label", "correlation_id")
    date_hierarchy = "occurred_at"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
