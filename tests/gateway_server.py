"""A payment gateway for tests: a real HTTP server on 127.0.0.1 that honours Idempotency-Key."""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Gateway:
    """A payment gateway that honours Idempotency-Key: it pays a key once and answers the same for repeats. Its
    behaviour per request is scripted: "timeout", "500", "400" or "ok" (the last one repeats)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = Counter()
        self.paid: dict[str, dict] = {}
        self.bodies = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                key = self.headers.get("Idempotency-Key", "")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                gateway.requests[key] += 1
                gateway.bodies.append(body)
                step = gateway.script.pop(0) if len(gateway.script) > 1 else gateway.script[0]
                if step == "timeout":
                    time.sleep(1.0)
                    return
                if step in ("500", "400"):
                    self.send_response(int(step))
                    self.end_headers()
                    return
                answer = gateway.paid.setdefault(key, {"id": f"pay-{len(gateway.paid) + 1}", "amount": body["amount"]})
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/payments"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def refused_payment_escalation(claim, settings):
    """A straight-through claim whose payment the gateway refuses (400): the engine pays inline, the refusal fails
    the payment for good, and an ``effect_failed`` escalation opens on the case. Returns it."""
    from operations import engine
    from operations.models import Escalation, EscalationStatus
    from tests.helpers import submit

    with Gateway(["400"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url
        case = submit(claim)
        engine.advance_case(case.pk)
    return Escalation.objects.get(case=case, status=EscalationStatus.OPEN, reason="effect_failed")
