from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.actors import Actor
from operations.agents.ml import train_agent
from operations.errors import DomainError


class Command(BaseCommand):
    help = "Train an ML agent's model on closed cases (and/or the pack's synthetic history); report holdout metrics."

    def add_arguments(self, parser):
        parser.add_argument("agent_key", help="the model key, e.g. claims.assessment_ml or claims.fraud_ml")
        parser.add_argument("--since", type=date.fromisoformat, help="only cases closed on or after this date")
        parser.add_argument(
            "--synthetic", type=int, help="rows of synthetic history to add (default: 4000 if < 500 closed cases)"
        )
        parser.add_argument("--output", type=Path, help="write the model to this file only (a pack's default model)")

    def handle(self, *args, agent_key, since, synthetic, output, **options):
        if synthetic is not None and not 0 <= synthetic <= 1_000_000:
            raise CommandError("--synthetic must be between 0 and 1,000,000")
        try:
            result = train_agent(
                agent_key=agent_key, actor=Actor.system("train_agent"), since=since, synthetic=synthetic, output=output
            )
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        metrics = result["metrics"] if isinstance(result, dict) else result.metrics
        version = result["version"] if isinstance(result, dict) else result.version
        self.stdout.write(f"{agent_key} model {version}")
        for name, value in metrics.items():
            if name == "reliability":
                self.stdout.write("  reliability (bin: n, mean predicted, observed):")
                for b in value:
                    self.stdout.write(f"    {b['bin']}: {b['n']}, {b['mean_predicted']:.3f}, {b['observed_rate']:.3f}")
            else:
                self.stdout.write(f"  {name}: {value}")
        self.stdout.write(self.style.SUCCESS(f"saved to {output or result.path}"))
