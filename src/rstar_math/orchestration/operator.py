"""Operating the pipeline on a Kubeflow cluster through the KFP API (the `rstar kfp` commands).

    rstar kfp upload   --pipeline-file pipelines/self_evolution.yaml --name rstar-self-evolution --version 0.1.0
    rstar kfp schedule --name nightly --cron "0 0 2 * * *" --experiment rstar --param preset=paper ...
    rstar kfp submit   --experiment rstar --param rounds=2
    rstar kfp runs     --experiment rstar

Endpoint and auth: --host / KFP_HOST, --namespace / KFP_NAMESPACE, and --token / KFP_TOKEN;
without a token the kfp client uses the in-cluster service-account token
(KF_PIPELINES_SA_TOKEN_PATH), which is what the chart's upload job runs with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Endpoint:
    host: str | None
    namespace: str
    token: str | None

    @classmethod
    def from_args(cls, host: str | None, namespace: str | None, token: str | None) -> "Endpoint":
        return cls(
            host=host or os.environ.get("KFP_HOST"),
            namespace=namespace or os.environ.get("KFP_NAMESPACE", "kubeflow"),
            token=token or os.environ.get("KFP_TOKEN"),
        )

    def client(self):
        import kfp
        from kfp.client import ServiceAccountTokenVolumeCredentials

        credentials = None
        token_path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", "/var/run/secrets/kubeflow/pipelines/token")
        if self.token is None and os.path.exists(token_path):
            # With an explicit host the kfp client would not look for the projected token by itself.
            credentials = ServiceAccountTokenVolumeCredentials(path=token_path)
        return kfp.Client(host=self.host, namespace=self.namespace, existing_token=self.token, credentials=credentials)


def parse_params(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value that is JSON (`2`, `[...]`, `{...}`, `"text"`) is decoded, anything else is a string."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter {item!r}: expected key=value")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _pipeline_id(client, name: str, namespace: str) -> str | None:
    """The id of the pipeline `name` in the namespace (or among shared pipelines)."""
    predicate = {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}
    response = client.list_pipelines(filter=json.dumps(predicate), namespace=namespace)
    pipelines = response.pipelines or []
    return pipelines[0].pipeline_id if pipelines else None


def upload(client, pipeline_file: str, name: str, version: str | None, namespace: str) -> tuple[str, str]:
    """Create the pipeline (in the namespace), or add a version to it; an existing version of the same name is
    left as it is. Returns (pipeline id, version id)."""
    pipeline_id = _pipeline_id(client, name, namespace)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(pipeline_file, pipeline_name=name, namespace=namespace)
        pipeline_id = pipeline.pipeline_id
        if not version:
            return pipeline_id, _latest_version(client, pipeline_id)
    existing = client.list_pipeline_versions(pipeline_id, page_size=100).pipeline_versions or []
    for found in existing:
        if found.display_name == (version or "latest"):
            return pipeline_id, found.pipeline_version_id
    created = client.upload_pipeline_version(pipeline_file, pipeline_version_name=version or "latest",
                                             pipeline_id=pipeline_id)
    return pipeline_id, created.pipeline_version_id


def _latest_version(client, pipeline_id: str) -> str:
    versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions
    if not versions:
        raise ValueError(f"pipeline {pipeline_id} has no versions; run `rstar kfp upload` first")
    return versions[0].pipeline_version_id


def _experiment_id(client, name: str, namespace: str) -> str:
    try:
        return client.get_experiment(experiment_name=name, namespace=namespace).experiment_id
    except ValueError:
        return client.create_experiment(name, namespace=namespace).experiment_id


def schedule(client, *, name: str, cron: str, experiment: str, namespace: str, pipeline_name: str,
             params: Mapping[str, Any], max_concurrency: int = 1) -> str:
    """Create the recurring run `name`, replacing one of that name (the API cannot edit one in place)."""
    pipeline_id = _pipeline_id(client, pipeline_name, namespace)
    if pipeline_id is None:
        raise ValueError(f"no pipeline named {pipeline_name!r}; run `rstar kfp upload` first")
    experiment_id = _experiment_id(client, experiment, namespace)
    existing = client.list_recurring_runs(experiment_id=experiment_id, page_size=100).recurring_runs or []
    for run in existing:
        if run.display_name == name:
            client.delete_recurring_run(run.recurring_run_id)
    created = client.create_recurring_run(
        experiment_id=experiment_id, job_name=name, cron_expression=cron, max_concurrency=max_concurrency,
        no_catchup=True, pipeline_id=pipeline_id, version_id=_latest_version(client, pipeline_id), params=dict(params),
    )
    return created.recurring_run_id


def submit(client, *, experiment: str, namespace: str, pipeline_name: str, run_name: str,
           params: Mapping[str, Any]) -> str:
    pipeline_id = _pipeline_id(client, pipeline_name, namespace)
    if pipeline_id is None:
        raise ValueError(f"no pipeline named {pipeline_name!r}; run `rstar kfp upload` first")
    run = client.run_pipeline(experiment_id=_experiment_id(client, experiment, namespace), job_name=run_name,
                              pipeline_id=pipeline_id, version_id=_latest_version(client, pipeline_id),
                              params=dict(params))
    return run.run_id


def list_runs(client, *, experiment: str | None, namespace: str, page_size: int = 20) -> list[dict]:
    experiment_id = _experiment_id(client, experiment, namespace) if experiment else None
    response = client.list_runs(experiment_id=experiment_id, namespace=namespace, page_size=page_size,
                                sort_by="created_at desc")
    return [{"run_id": r.run_id, "name": r.display_name, "state": r.state, "created_at": str(r.created_at)}
            for r in response.runs or []]
