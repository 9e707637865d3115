from django.contrib import admin

from audit.actors import Actor
from governance.models import AgentCostBudget, AgentPolicy, PolicyVersion, StopSwitch
from governance.services import cost_budget_set


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


@admin.register(AgentCostBudget)
class AgentCostBudgetAdmin(admin.ModelAdmin):
    """Daily cost ceilings per agent; saved through the audited service, today's spending is read-only."""

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
