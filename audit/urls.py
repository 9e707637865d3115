from django.urls import path

from audit import views

app_name = "audit"
urlpatterns = [
    path("", views.status, name="status"),
    path("events/", views.event_list, name="events"),
    path("cases/<int:case_id>/dossier.json", views.dossier_json, name="dossier-json"),
    path("cases/<int:case_id>/dossier/", views.dossier_html, name="dossier"),
]
