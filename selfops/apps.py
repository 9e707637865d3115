from django.apps import AppConfig


class SelfopsConfig(AppConfig):
    name = "selfops"
    verbose_name = "selfops"

    def ready(self):
        from selfops import checks  # noqa: F401  (registers the system checks)
