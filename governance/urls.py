from django.urls import path

from governance import views

app_name = "governance"
urlpatterns = [
    path("", views.home, name="home"),
    path("stop", views.stop_flip, name="stop"),
    path("agents/<str:agent_key>/promote", views.promote, name="promote"),
    path("qa/<int:pk>/decide", views.qa_decide, name="qa-decide"),
    path("backtest/", views.backtest_view, name="backtest"),
]
