from django.core.management.base import BaseCommand, CommandError

from audit.actors import Actor
from operations.agents.versions import agent_replay
from operations.errors import DomainError


class Command(BaseCommand):
    help = "Replay an agent version on the last K closed cases and compare with what was finally decided."

    def add_arguments(self, parser):
        parser.add_argument("agent_key")
        parser.add_argument("version")
        parser.add_argument("--last", type=int, default=100, help="how many closed cases (default 100)")

    def handle(self, *args, agent_key, version, last, **options):
        try:
            result = agent_replay(agent_key=agent_key, version=version, last=last, actor=Actor.system("agent_replay"))
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        for name in (
            "cases",
            "errors",
            "agreed",
            "agreement",
            "amount_compared",
            "mean_abs_amount_error",
            "would_escalate",
            "human_decided",
            "policy_version",
        ):
            self.stdout.write(f"{name}: {result[name]}")
