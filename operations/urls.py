from django.urls import path

from operations import views

app_name = "portal"
urlpatterns = [
    path("", views.home, name="home"),
    path("escalations/", views.escalation_list, name="escalations"),
    path("escalations/<int:pk>/", views.escalation_detail, name="escalation"),
    path("escalations/<int:pk>/resolve", views.escalation_resolve_view, name="escalation-resolve"),
    path("cases/", views.case_list, name="cases"),
    path("cases/<int:pk>/", views.case_detail, name="case"),
    path("agents/", views.agents, name="agents"),
    path("agents/<str:agent_key>/<str:version>/<str:action>", views.agent_version_action, name="agent-version-action"),
]
