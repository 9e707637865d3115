from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views import defaults

from operations.api.errors import api_aware_handler
from operations.api.views import PrometheusMetricsApi
from selfops import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/", include("operations.api.urls")),
    path("metrics", PrometheusMetricsApi.as_view(), name="metrics"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("governance/", include("governance.urls")),
    path("audit/", include("audit.urls")),
    path("", include("operations.urls")),
]

handler404 = api_aware_handler(defaults.page_not_found)
handler500 = api_aware_handler(defaults.server_error)
