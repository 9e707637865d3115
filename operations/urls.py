from django.urls import path

from operations import views

app_name = "portal"
urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("escalations/", views.escalation_list, name="escalations"),
    path("escalations/export.csv", views.escalation_export, name="escalations-export"),
    path("escalations/claim-next", views.escalation_claim_next_view, name="escalation-claim-next"),
    path("escalations/reassign", views.escalation_reassign_view, name="escalations-reassign"),
    path("escalations/<int:pk>/", views.escalation_detail, name="escalation"),
    path("escalations/<int:pk>/resolve", views.escalation_resolve_view, name="escalation-resolve"),
    path("escalations/<int:pk>/claim", views.escalation_claim_view, name="escalation-claim"),
    path("escalations/<int:pk>/release", views.escalation_release_view, name="escalation-release"),
    path("cases/", views.case_list, name="cases"),
    path("cases/<int:pk>/", views.case_detail, name="case"),
    path("agents/", views.agents, name="agents"),
    path("agents/<str:agent_key>/<str:version>/<str:action>", views.agent_version_action, name="agent-version-action"),
]
