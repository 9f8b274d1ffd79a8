"""The `rstar` command line.

    rstar run                         the self-evolution pipeline, locally, on the embedded default
    rstar config paper                print a preset (or a YAML file) with overrides applied
    rstar schema trees                the columns of an artefact kind
    rstar compile                     write the Kubeflow YAML (pipelines/, components/)
    rstar kfp upload|schedule|submit|runs   operate the pipeline on a cluster
    rstar intake FILE... --out URI    problem files in, a deduplicated problems artefact out
    rstar lineage URI                 walk an artefact's lineage to its roots and verify every hash
    rstar s3-server --root DIR        a local S3 server (rclone) for runs without a cloud bucket
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import uuid
from pathlib import Path

from rstar_math.config import ConfigError, config_hash, load_config


def _context(args, config=None):
    from rstar_math.lineage import RunContext

    run_id = args.run_id or os.environ.get("RSTAR_RUN_ID") or f"local-{uuid.uuid4().hex[:8]}"
    return RunContext(run_id=run_id, config_hash=config_hash(config) if config else None)


def cmd_config(args) -> int:
    print(load_config(args.source, args.set).to_yaml(), end="")
    return 0


def cmd_schema(args) -> int:
    from rstar_math.data.schemas import KINDS, describe

    kinds = [KINDS[args.kind]] if args.kind else list(KINDS.values())
    print("\n\n".join(describe(k) for k in kinds))
    return 0


def cmd_intake(args) -> int:
    from rstar_math.stages.intake import intake

    result = intake(args.sources, args.out, context=_context(args))
    print(f"{result.problems} problems ({result.rows_read} rows read, {result.duplicates} duplicates, "
          f"{result.malformed} malformed) -> {args.out}")
    return 0


def cmd_lineage(args) -> int:
    from rstar_math.lineage import audit
    from rstar_math.stages.registry import audit_pointer, is_pointer

    reports = audit_pointer(args.uri) if is_pointer(args.uri) else {"": audit(args.uri)}
    if args.json:
        print(json.dumps({name or "artefact": {"target": r.target, "ok": r.ok, "problems": r.problems, "roots": r.roots,
                                               "artefacts": list(r.nodes)} for name, r in reports.items()}, indent=2))
    else:
        for name, report in reports.items():
            if name:
                print(f"== {name}")
            print(report.render())
    return 0 if all(r.ok for r in reports.values()) else 1


def cmd_s3_server(args) -> int:
    from rstar_math.store.s3server import S3Server

    server = S3Server.start(args.root, buckets=args.bucket, port=args.port,
                            access_key=args.access_key, secret_key=args.secret_key)
    print(f"S3 server on {server.endpoint} serving {server.root} (buckets: {', '.join(args.bucket)})")
    print("Point the store at it with:")
    for key, value in server.env().items():
        print(f"  export {key}={value}")
    print("Ctrl-C stops it.", flush=True)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # delivered to sigwait, not as KeyboardInterrupt
    try:
        signal.sigwait(stop_signals)
    finally:
        server.stop()
    return 0


def cmd_run(args) -> int:
    from rstar_math.orchestration.local import run_locally

    run_id = args.run_id or os.environ.get("RSTAR_RUN_ID") or f"local-{uuid.uuid4().hex[:8]}"
    root = Path(args.root)
    print(f"run {run_id}: the self-evolution pipeline ({args.config}) with kfp.local under {root}", flush=True)
    result = run_locally(args.config, args.set, root=root, run_id=run_id, rounds=args.rounds, quiet=not args.verbose)
    print(result.summary)
    print(f"{len(result.executed)} tasks ran in {result.seconds / 60:.1f} min (finished tasks of earlier runs with the "
          "same inputs come from the cache)" + (f"; full log: {result.log_file}" if result.log_file else ""))
    return 0


def cmd_compile(args) -> int:
    from rstar_math.orchestration.compile import compile_all, stale_files

    if args.check:
        stale = stale_files(args.root)
        for path in stale:
            print(f"stale: {path}")
        if stale:
            print("run `rstar compile` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    for path in compile_all(args.root):
        print(f"wrote {path}")
    return 0


def cmd_kfp(args) -> int:
    from rstar_math.orchestration import operator

    endpoint = operator.Endpoint.from_args(args.host, args.namespace, args.token)
    client = endpoint.client()
    if args.kfp_command == "upload":
        pipeline_id, version_id = operator.upload(client, args.pipeline_file, args.name, args.version,
                                                  endpoint.namespace)
        print(f"pipeline {args.name}: id {pipeline_id}, version {version_id}")
    elif args.kfp_command == "schedule":
        run_id = operator.schedule(client, name=args.name, cron=args.cron, experiment=args.experiment,
                                   namespace=endpoint.namespace, pipeline_name=args.pipeline_name,
                                   params=operator.parse_params(args.param), max_concurrency=args.max_concurrency)
        print(f"recurring run {args.name} ({args.cron}): {run_id}")
    elif args.kfp_command == "submit":
        run_name = args.run_name or f"{args.pipeline_name}-{uuid.uuid4().hex[:6]}"
        run_id = operator.submit(client, experiment=args.experiment, namespace=endpoint.namespace,
                                 pipeline_name=args.pipeline_name, run_name=run_name,
                                 params=operator.parse_params(args.param))
        print(f"run {run_name}: {run_id}")
    else:
        for run in operator.list_runs(client, experiment=args.experiment, namespace=endpoint.namespace):
            print(f"{run['created_at']}  {run['state']:<10}  {run['run_id']}  {run['name']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rstar", description="rStar-Math self-evolution as a batch pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_run_id(p):
        p.add_argument("--run-id", help="run id recorded in lineage (default: $RSTAR_RUN_ID or a new one)")
        return p

    def with_config(p, default="default"):
        p.add_argument("--config", default=default, help="preset name or YAML file (default: %(default)s)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        return p

    p = with_run_id(with_config(sub.add_parser("run", help="run the self-evolution pipeline locally with kfp.local")))
    p.add_argument("--root", default="runs", help="where the local run keeps its artefacts (default: %(default)s)")
    p.add_argument("--rounds", type=int, help="rounds to run, 1 to 4 (default: the config's)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="compile the pipeline and components to YAML")
    p.add_argument("--root", default=".", help="repository root to write under (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="only check that the checked-in YAML is current")
    p.set_defaults(func=cmd_compile)

    kfp_parser = sub.add_parser("kfp", help="operate the pipeline on a Kubeflow cluster (KFP API)")
    kfp_sub = kfp_parser.add_subparsers(dest="kfp_command", required=True)

    def with_endpoint(p):
        p.add_argument("--host", help="KFP API endpoint (default: $KFP_HOST, or in-cluster)")
        p.add_argument("--namespace", help="Kubeflow profile namespace (default: $KFP_NAMESPACE or kubeflow)")
        p.add_argument("--token", help="bearer token (default: $KFP_TOKEN, or the service-account token)")
        p.set_defaults(func=cmd_kfp)
        return p

    p = with_endpoint(kfp_sub.add_parser("upload", help="upload the compiled pipeline (or a new version of it)"))
    p.add_argument("--pipeline-file", default="pipelines/self_evolution.yaml")
    p.add_argument("--name", default="rstar-self-evolution")
    p.add_argument("--version", help="version name (default: the first upload is the version)")
    for name, help_text in (("schedule", "create or replace a recurring run"), ("submit", "start one run")):
        p = with_endpoint(kfp_sub.add_parser(name, help=help_text))
        p.add_argument("--experiment", default="rstar-math")
        p.add_argument("--pipeline-name", default="rstar-self-evolution")
        p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="pipeline parameter; JSON values (2, [..], {..}, \"..\") are decoded, others are strings")
        if name == "schedule":
            p.add_argument("--name", required=True, help="recurring run name")
            p.add_argument("--cron", required=True, help='six-field cron, e.g. "0 0 2 * * *" (02:00 daily)')
            p.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default: 1, no overlap)")
        else:
            p.add_argument("--run-name")
    p = with_endpoint(kfp_sub.add_parser("runs", help="list recent runs"))
    p.add_argument("--experiment")

    p = sub.add_parser("config", help="print a resolved config")
    p.add_argument("source", nargs="?", default="default", help="preset name or YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("schema", help="describe artefact schemas")
    p.add_argument("kind", nargs="?", help="problems, trees, verified_trees, sft_data, ppm_pairs or metrics")
    p.set_defaults(func=cmd_schema)

    p = with_run_id(sub.add_parser("intake", help="problem files (JSONL, JSON, Parquet; local or s3://) to a problems artefact"))
    p.add_argument("sources", nargs="+")
    p.add_argument("--out", required=True, help="artefact URI to write")
    p.set_defaults(func=cmd_intake)

    p = sub.add_parser("lineage", help="audit an artefact's (or the registry pointer's) lineage back to its roots")
    p.add_argument("uri", help="an artefact URI, or the nightly registry pointer (promoted.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("s3-server", help="serve a local directory over S3 (rclone serve s3)")
    p.add_argument("--root", default=str(Path(".rstar") / "s3"), help="directory served; each folder is a bucket")
    p.add_argument("--bucket", action="append", default=None, help="bucket(s) to create (default: rstar)")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--access-key", default="rstar-local-access")
    p.add_argument("--secret-key", default="rstar-local-secret")
    p.set_defaults(func=cmd_s3_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "bucket", "unset") is None:
        args.bucket = ["rstar"]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"rstar: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
