"""System checks that refuse a configuration which would break the delivery guarantees."""

from django.conf import settings
from django.core.checks import Error, register


@register()
def q_cluster_retry_exceeds_timeout(app_configs, **kwargs):
    conf = settings.Q_CLUSTER
    timeout, retry = conf.get("timeout"), conf.get("retry", 60)
    errors = []
    if timeout is None:
        errors.append(Error("Q_CLUSTER['timeout'] must be set", id="selfops.E001"))
    elif retry <= timeout:
        errors.append(
            Error(
                f"Q_CLUSTER['retry'] ({retry}s) must exceed Q_CLUSTER['timeout'] ({timeout}s)",
                hint="Otherwise django-q2 delivers a task again while it is still running. Set Q_RETRY > Q_TIMEOUT.",
                id="selfops.E002",
            )
        )
    if not conf.get("max_attempts"):
        errors.append(Error("Q_CLUSTER['max_attempts'] must be set explicitly (not 0 = forever)", id="selfops.E003"))
    return errors
