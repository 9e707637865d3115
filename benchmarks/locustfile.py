"""Load test of the integrator API: submit claims with idempotency keys (a share of them retried with the same key, as
a client would after a timeout) and read the status of submitted cases.

    SELFOPS_API_KEY=sok_... locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 \
        --headless -u 20 -r 20 -t 60s

Needs the claims pack installed (``manage.py load_demo``) and a client with ``cases:write cases:read`` and a throttle
rate high enough not to be the limit (``manage.py api_client_create load --scopes cases:write cases:read
--throttle-rate 1000000/min``).
"""

import os
import random
import uuid

from locust import FastHttpUser, between, task

API_KEY = os.environ.get("SELFOPS_API_KEY", "")


class Integrator(FastHttpUser):  # the gevent HTTP client: the load generator must not be what limits
    wait_time = between(0, 0.01)

    def on_start(self):
        self.auth = {"Authorization": f"Bearer {API_KEY}"}
        self.generator = None
        self.submitted: list[int] = []

    def _claim(self):
        if self.generator is None:
            policies = _policies()  # sets Django up first: the claims pack imports models
            from operations.packs.claims.data import ClaimGenerator

            self.generator = ClaimGenerator(policies, seed=random.randrange(1 << 30))
        return self.generator.claim("straight_through")

    @task(4)
    def submit(self):
        claim = self._claim()
        reference = f"{claim.reference}-{uuid.uuid4().hex[:8]}"
        body = {"workflow": "claims", "reference": reference, "payload": claim.payload}
        key = str(uuid.uuid4())
        with self.client.post(
            "/api/v1/cases/",
            json=body,
            headers={**self.auth, "Idempotency-Key": key},
            name="POST /cases/",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            self.submitted.append(response.json()["id"])
        if random.random() < 0.1:  # a retry after a timeout: must replay, not create
            self.client.post(
                "/api/v1/cases/", json=body, headers={**self.auth, "Idempotency-Key": key}, name="POST /cases/ (retry)"
            )

    @task(2)
    def status(self):
        if self.submitted:
            case_id = random.choice(self.submitted[-50:])
            self.client.get(f"/api/v1/cases/{case_id}/", headers=self.auth, name="GET /cases/{id}/")


_POLICIES: list[dict] = []


def _policies() -> list[dict]:
    """Policies to claim against, read once from the database the server uses (DATABASE_URL)."""
    if not _POLICIES:
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "selfops.settings")
        django.setup()
        from operations.packs.claims.install import policies_in_db

        _POLICIES.extend(policies_in_db()[:2000])
    return _POLICIES
