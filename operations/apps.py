from django.apps import AppConfig
from django.db.models.signals import post_migrate


class OperationsConfig(AppConfig):
    name = "operations"
    verbose_name = "Operations"

    def ready(self):
        from governance.signals import stop_released
        from operations import receivers
        from operations.packs import load_installed_packs

        stop_released.connect(receivers.resume_after_stop, dispatch_uid="operations.resume_after_stop")
        post_migrate.connect(receivers.ensure_schedules, sender=self, dispatch_uid="operations.ensure_schedules")
        load_installed_packs()
