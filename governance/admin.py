from django.contrib import admin

from governance.models import AgentPolicy, PolicyVersion, StopSwitch


class PolicyVersionInline(admin.TabularInline):
    model = PolicyVersion
    extra = 0
    can_delete = False
    fields = ("number", "autonomy", "allowed_actions", "max_amount", "min_confidence", "created_by", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(AgentPolicy)
class AgentPolicyAdmin(admin.ModelAdmin):
    list_display = ("agent_key", "name", "current_version")
    readonly_fields = ("agent_key", "current_version")
    inlines = [PolicyVersionInline]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(StopSwitch)
class StopSwitchAdmin(admin.ModelAdmin):
    list_display = ("scope", "target", "engaged", "reason", "changed_by", "changed_at")
    readonly_fields = ("scope", "target", "engaged", "reason", "changed_by", "changed_at")

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
