from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.permissions import AllowAny

from operations.api import views

app_name = "api"
urlpatterns = [
    path("v1/cases/", views.CasesApi.as_view(), name="cases"),
    path("v1/cases/<int:pk>/", views.CaseDetailApi.as_view(), name="case"),
    path("v1/cases/<int:pk>/timeline/", views.CaseTimelineApi.as_view(), name="case-timeline"),
    path("v1/cases/<int:pk>/cancel/", views.CaseCancelApi.as_view(), name="case-cancel"),
    path("v1/escalations/", views.EscalationsApi.as_view(), name="escalations"),
    path("v1/escalations/<int:pk>/", views.EscalationDetailApi.as_view(), name="escalation"),
    path("v1/escalations/<int:pk>/claim/", views.EscalationClaimApi.as_view(), name="escalation-claim"),
    path("v1/escalations/<int:pk>/resolve/", views.EscalationResolveApi.as_view(), name="escalation-resolve"),
    path("v1/governance/agents/", views.PoliciesApi.as_view(), name="agents"),
    path("v1/governance/agents/<str:agent_key>/", views.PolicyDetailApi.as_view(), name="agent"),
    path("v1/governance/stops/", views.StopSwitchesApi.as_view(), name="stops"),
    path("v1/governance/stops/engage/", views.StopEngageApi.as_view(), name="stop-engage"),
    path("v1/governance/stops/release/", views.StopReleaseApi.as_view(), name="stop-release"),
    path("v1/audit/events/", views.AuditEventsApi.as_view(), name="audit-events"),
    path("v1/audit/chain/", views.AuditChainStatusApi.as_view(), name="audit-chain"),
    path("v1/cases/<int:pk>/dossier/", views.CaseDossierApi.as_view(), name="case-dossier"),
    path("v1/metrics/summary", views.MetricsSummaryApi.as_view(), name="metrics-summary"),
    path("v1/webhooks/subscriptions/", views.SubscriptionsApi.as_view(), name="webhook-subscriptions"),
    path("v1/webhooks/subscriptions/<int:pk>/", views.SubscriptionDetailApi.as_view(), name="webhook-subscription"),
    path("v1/webhooks/deliveries/", views.DeliveriesApi.as_view(), name="webhook-deliveries"),
    path("v1/webhooks/deliveries/<int:pk>/", views.DeliveryDetailApi.as_view(), name="webhook-delivery"),
    path("v1/webhooks/deliveries/<int:pk>/redeliver/", views.DeliveryRedeliverApi.as_view(), name="webhook-redeliver"),
]

urlpatterns += [
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    # the split view serves its JavaScript from this same URL (?script): no inline script, fit for CSP script-src 'self'
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api:schema", permission_classes=[AllowAny]),
        name="docs",
    ),
]
