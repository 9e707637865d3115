import json

from django.core.management import get_commands
from django.core.management.base import BaseCommand, CommandError

from operations.bench.engine_bench import EngineBench


def _fmt(value, unit="", digits=1):
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


# `bench <target> ...` for the other benchmarks runs the command that implements it, with the remaining arguments.
DELEGATES = {"portal": "bench_portal", "audit": "bench_audit", "governance": "bench_governance"}


class Command(BaseCommand):
    help = (
        "Benchmarks that print figures and ratios measured in one run. "
        "`bench engine --cases N [--workers W] [--json]` or `bench engine --rate R --duration D`; "
        "`bench portal|audit|governance --help` for the others."
    )

    def run_from_argv(self, argv):
        if len(argv) > 2 and argv[2] in DELEGATES:
            from django.core.management import load_command_class

            name = DELEGATES[argv[2]]
            command = load_command_class(get_commands()[name], name)
            return command.run_from_argv([argv[0], f"bench {argv[2]}", *argv[3:]])
        return super().run_from_argv(argv)

    def add_arguments(self, parser):
        parser.add_argument("target", choices=["engine", *DELEGATES])
        parser.add_argument("--cases", type=int, default=2000)
        parser.add_argument(
            "--reference-cases",
            type=int,
            default=None,
            help="claims for the in-process and one-task-per-step references (default: min(N, 1000))",
        )
        parser.add_argument("--noop-tasks", type=int, default=3000)
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument(
            "--clusters", type=int, default=1, help="also run the claims through this many clusters at once (scale-out)"
        )
        parser.add_argument("--rate", type=float, default=None, help="steady load: claims per second")
        parser.add_argument("--duration", type=float, default=60, help="steady load: seconds")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--json", action="store_true", dest="as_json", help="print one JSON object last")

    def handle(
        self, *args, target, cases, reference_cases, noop_tasks, workers, clusters, rate, duration, seed, as_json, **_
    ):
        if target in DELEGATES:  # reached through call_command (the command line goes through run_from_argv)
            raise CommandError(
                f"call the {DELEGATES[target]} command itself (`bench {target}` is for the command line)"
            )
        if cases < 1 or workers < 1 or noop_tasks < 1 or clusters < 1:
            raise CommandError("--cases, --workers, --clusters and --noop-tasks must be at least 1")
        bench = EngineBench(out=self.stdout.write, workers=workers, seed=seed)
        if rate is not None:
            if rate <= 0 or duration <= 0:
                raise CommandError("--rate and --duration must be positive")
            result = bench.run_rate(rate=rate, duration=duration)
            self.stdout.write(
                f"steady load {result['offered_claims_per_s']:.1f} claims/s for {duration:.0f} s "
                f"({result['claims']} claims, {result['auto_claims']} needing no human): decision latency "
                f"p50 {_fmt(result['p50_latency_s'], ' s', 3)} · p95 {_fmt(result['p95_latency_s'], ' s', 3)} · "
                f"p99 {_fmt(result['p99_latency_s'], ' s', 3)}"
            )
        else:
            result = bench.run(
                cases=cases,
                reference_cases=reference_cases or min(cases, 1000),
                noop_tasks=noop_tasks,
                clusters=clusters,
            )
            e, a, b = result["engine"], result["in_process"], result["one_task_per_step"]
            self.stdout.write("")
            self.stdout.write(
                f"engine ({result['database']}, {workers} workers): {e['claims']:,} claims, "
                f"{e['steps']:,} steps in {e['elapsed_s']:.1f} s"
            )
            self.stdout.write(f"  {e['claims_per_s']:.1f} claims/s · {e['steps_per_s']:.1f} steps/s end to end")
            self.stdout.write(
                f"  latency submission→final (no human): p50 {_fmt(e['p50_latency_s'], ' s', 2)} · "
                f"p95 {_fmt(e['p95_latency_s'], ' s', 2)} · p99 {_fmt(e['p99_latency_s'], ' s', 2)}"
            )
            self.stdout.write(
                f"  queries per automatic step {result['queries_per_step']:.1f} · "
                f"worker peak RSS {result['worker_peak_rss_mb']:.0f} MB"
            )
            self.stdout.write(f"  outcomes {e['statuses']} · steps applied twice: {e['steps_applied_twice']}")
            self.stdout.write("references (same run):")
            self.stdout.write(
                f"  (a) in-process, no queue: {a['claims_per_s']:.1f} claims/s "
                f"({a['steps_per_s']:.1f} steps/s) — engine at {result['ratio_vs_in_process']:.2f}×"
            )
            self.stdout.write(
                f"  (b) one task per step: {b['claims_per_s']:.1f} claims/s ({b['steps_per_s']:.1f} "
                f"steps/s) — engine at {result['ratio_vs_one_task_per_step']:.2f}×"
            )
            self.stdout.write(
                f"  (c) bare django-q2 no-op: {result['noop_tasks_per_s']:.1f} tasks/s — engine "
                f"steps/s at {result['steps_per_s_vs_noop_tasks_per_s']:.2f}× of it"
            )
            if scaled := result.get("scale_out"):
                self.stdout.write(
                    f"scale-out (same run): {scaled['clusters']} clusters × {workers} workers: "
                    f"{scaled['claims_per_s']:.1f} claims/s ({scaled['steps_per_s']:.1f} steps/s) — "
                    f"{scaled['ratio_vs_one_cluster']:.2f}× one cluster; steps applied twice: "
                    f"{scaled['steps_applied_twice']}"
                )
        if as_json:
            self.stdout.write(json.dumps(result, default=str, sort_keys=True))
