"""Deployment assets, checked offline (no Docker daemon, no cluster).

- images/: each Dockerfile is parsed and checked (pinned bases, multi-stage, non-root numeric
  USER, the package installed from the repository, no secret-looking ENV or ARG).
- helm/rstar-math: linted and rendered in-process by Helm v4 through the helm-python-sdk
  package (`helm_python.lint`, `helm_python.Chart.load(...).render(...)`), with the default
  values and with ci/all-options-values.yaml, which turns every option on.
- manifests/: the kustomize base and overlays, rendered by the small renderer below (PyPI has
  no kustomize binary; see `kustomize_build`), and compared with a real `kustomize build` or
  `kubectl kustomize` wherever one is on PATH.
- every rendered object is validated against Kubernetes' OpenAPI schemas in strict mode
  (unknown fields are errors) with kubernetes-validate, for Kubernetes K8S_VERSION.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the `test` extra")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the `test` extra")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "rstar-math"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
MANIFESTS = ROOT / "manifests"
IMAGES = ROOT / "images"

# The Kubernetes version everything is validated against: the first release with
# MutatingAdmissionPolicy at v1 (GA). The v1beta1 variant is validated against 1.34.
K8S_VERSION = "1.36.0"
RELEASE, NAMESPACE = "rstar-math", "rstar-math"
MODEL_CODE_LABEL = "rstar-math.io/executes-model-code"
CLUSTER_SCOPED = {"MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding", "ClusterRole", "ClusterRoleBinding",
                  "Namespace", "RuntimeClass", "CustomResourceDefinition"}


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def render_chart(values: dict | None = None) -> list[dict]:
    """`helm template` with these values (schema-checked first), as a list of objects."""
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def all_options() -> dict:
    return yaml.safe_load(ALL_OPTIONS.read_text())


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(objects: list[dict]) -> set[str]:
    return {o["kind"] for o in objects}


# A minimal kustomize: exactly the features manifests/ uses (resources, namespace, labels
# without selectors, secretGenerator without hash suffixes, images, strategic-merge patches of
# maps, JSON 6902 patches), and an error for anything else, so it cannot silently diverge from
# `kubectl kustomize`. No kustomize binary is installable from PyPI (the `kustomize` package
# there is an unrelated Python DSL), hence this renderer; test_kustomize_matches_real_binary
# compares the two wherever a real one is on PATH.
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "labels", "patches", "images",
                      "secretGenerator", "generatorOptions"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def kustomize_build(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: the test's kustomize renderer does not implement {sorted(unknown)}"
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += kustomize_build(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    options = kustomization.get("generatorOptions", {})
    for generator in kustomization.get("secretGenerator", []):
        assert options.get("disableNameSuffixHash"), "hash suffixes are not implemented"
        assert set(generator) <= {"name", "literals"}, generator
        data = dict(item.split("=", 1) for item in generator["literals"])
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": generator["name"]},
                        "type": "Opaque",
                        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
    for patch in kustomization.get("patches", []):
        text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        if isinstance(docs[0], list):  # JSON 6902
            target = patch["target"]
            selected = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
            assert len(selected) == 1, f"patch target {target} matches {len(selected)} objects"
            json6902(selected[0], docs[0])
        else:
            assert "target" not in patch, "strategic-merge patches with a target are not implemented"
            for doc in docs:
                matches = [o for o in objects
                           if o["kind"] == doc["kind"] and o["metadata"]["name"] == doc["metadata"]["name"]]
                assert len(matches) == 1, f"patch for {doc['kind']}/{doc['metadata']['name']} matches nothing"
                merge_maps(matches[0], doc)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    for label_set in kustomization.get("labels", []):
        assert not label_set.get("includeSelectors"), "labels in selectors are not implemented"
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label_set["pairs"])
            if label_set.get("includeTemplates") and obj["kind"] in POD_TEMPLATE_KINDS:
                obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(label_set["pairs"])
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in pod_containers(obj):
                name, tag = split_image(container["image"])
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return objects


def split_image(reference: str) -> tuple[str, str]:
    """("registry/path/name", "tag") of an image reference."""
    name, sep, tag = reference.rpartition(":")
    return (name, tag) if sep and "/" not in tag else (reference, "")


def merge_maps(target: dict, patch: dict) -> None:
    """Strategic merge restricted to maps (lists would need per-field merge keys)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_maps(target[key], value)
        else:
            assert not isinstance(value, list), f"strategic merge of the list {key!r} is not implemented"
            target[key] = value


def json6902(target: dict, operations: list[dict]) -> None:
    for op in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = target
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), op["value"])
        elif op["op"] in ("add", "replace"):
            node[int(last) if isinstance(node, list) else last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"JSON patch op {op['op']} is not implemented")


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def pod_containers(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    return [] if spec is None else spec.get("initContainers", []) + spec["containers"]


OVERLAYS = ("dev", "prod")


@pytest.fixture(scope="module")
def default_objects() -> list[dict]:
    return render_chart()


@pytest.fixture(scope="module")
def full_objects() -> list[dict]:
    return render_chart(all_options())


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict]]:
    return {name: kustomize_build(MANIFESTS / "overlays" / name) for name in OVERLAYS}


# ---------------------------------------------------------------------------------------------
# Schema validation
# ---------------------------------------------------------------------------------------------

def validate(objects: list[dict], version: str = K8S_VERSION) -> None:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")


def test_strict_validation_rejects_unknown_fields():
    # Guards the guard: strict mode must reject a field Kubernetes does not know.
    job = copy.deepcopy(find(render_chart(), "Job"))
    job["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


HELM_VARIANTS = {
    "defaults": None,
    "all-options": "ALL",
    "rbac-off": {"rbac": {"create": False}},
    "minimal": {"uploadJob": {"enabled": False}, "networkPolicy": {"enabled": False},
                "kfp": {"launcher": {"create": False}}},
    "upload-only": {"schedule": {"enabled": False}, "serviceAccount": {"create": False, "name": "existing"}},
}


@pytest.mark.parametrize("variant", sorted(HELM_VARIANTS))
def test_chart_lints(variant):
    values = all_options() if HELM_VARIANTS[variant] == "ALL" else HELM_VARIANTS[variant]
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("variant", sorted(HELM_VARIANTS))
def test_chart_renders_valid_objects(variant):
    values = all_options() if HELM_VARIANTS[variant] == "ALL" else HELM_VARIANTS[variant]
    objects = render_chart(values)
    assert objects
    validate(objects)


def test_runtime_class_policy_v1beta1_valid_on_1_34():
    values = all_options()
    values["sandbox"]["admissionPolicyAPIVersion"] = "admissionregistration.k8s.io/v1beta1"
    policy = [o for o in render_chart(values) if o["kind"].startswith("MutatingAdmissionPolicy")]
    assert {o["apiVersion"] for o in policy} == {"admissionregistration.k8s.io/v1beta1"}
    validate(policy, "1.34.0")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_valid_objects(overlays, overlay):
    validate(overlays[overlay])


def test_values_schema_rejects_bad_values():
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(all_options())
        for bad in ({"run": {"rounds": 5}}, {"typo": 1}, {"schedule": {"cron": "0 2 * * *"}},
                    {"s3": {"endpoint": "minio:9000"}}, {"networkPolicy": {"objectStore": {"cidrs": ["10.0.0.0"]}}}):
            with pytest.raises(helm.HelmError):
                chart.validate_schema(bad)


def test_every_value_has_a_comment():
    """Every value has a `# --` comment above it; sections need none, a documented map's keys neither."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_line = re.compile(r"^(\s*)([A-Za-z][\w./-]*):(.*)$")
    data_below = None  # indent of a documented map whose keys are data, not values
    for number, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent, inline = len(match.group(1)), match.group(3).strip()
        if data_below is not None and indent > data_below:
            continue
        data_below = None
        comments = []
        for previous in reversed(lines[:number]):
            if not previous.lstrip().startswith("#"):
                break
            comments.append(previous.strip())
        documented = any(c.startswith("# --") for c in comments)
        following = next((n for n in lines[number + 1:] if n.strip() and not n.lstrip().startswith("#")), "")
        following_key = key_line.match(following)
        section = not inline and following_key is not None and len(following_key.group(1)) > indent
        if section and not documented:
            continue
        assert documented, f"values.yaml:{number + 1}: {line.strip()} has no `# --` comment"
        if not inline:  # a documented map or list: what is below it is its data
            data_below = indent


# ---------------------------------------------------------------------------------------------
# Chart features
# ---------------------------------------------------------------------------------------------

def test_standard_labels_on_every_object(default_objects, full_objects):
    for obj in default_objects + full_objects:
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks {key}"
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE
    assert all(o["metadata"]["labels"]["team"] == "math-research" for o in full_objects)


def test_s3_configmap_has_endpoint_and_region_and_no_credentials(default_objects, full_objects):
    default = find(default_objects, "ConfigMap", "rstar-math-s3")["data"]
    assert default == {"AWS_ENDPOINT_URL": "https://s3.us-east-1.amazonaws.com", "AWS_DEFAULT_REGION": "us-east-1"}
    assert find(full_objects, "ConfigMap", "rstar-s3")["data"]["AWS_ENDPOINT_URL"] == \
        "http://minio.minio.svc.cluster.local:9000"
    assert "Secret" not in kinds(default_objects + full_objects)


def launcher(objects) -> tuple[dict, dict]:
    data = find(objects, "ConfigMap", "kfp-launcher")["data"]
    return data, yaml.safe_load(data["providers"])["s3"]["default"]


def test_launcher_configmap_roots_pipelines_on_the_bucket(default_objects, full_objects):
    data, s3 = launcher(default_objects)
    assert data["defaultPipelineRoot"] == "s3://rstar-math/kfp"
    assert s3["endpoint"] == "s3.us-east-1.amazonaws.com" and s3["region"] == "us-east-1"
    assert s3["disableSSL"] is False
    assert s3["credentials"] == {"fromEnv": False, "secretRef": {
        "secretName": "rstar-s3", "accessKeyKey": "AWS_ACCESS_KEY_ID", "secretKeyKey": "AWS_SECRET_ACCESS_KEY"}}
    data, s3 = launcher(full_objects)
    assert data["defaultPipelineRoot"] == "s3://rstar-prod/kfp/artifacts"
    assert s3["endpoint"] == "minio.minio.svc.cluster.local:9000"
    assert s3["disableSSL"] is True and s3["forcePathStyle"] is True
    assert s3["credentials"] == {"fromEnv": True}


def test_role_is_namespaced_with_exactly_the_kfp_verbs(default_objects, full_objects):
    for objects in (default_objects, full_objects):
        assert not kinds(objects) & {"ClusterRole", "ClusterRoleBinding"}
        role = find(objects, "Role")
        rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role["rules"]}
        assert rules == {
            (("pipelines.kubeflow.org",), ("pipelines",)): ["create", "list"],
            (("pipelines.kubeflow.org",), ("experiments",)): ["create", "list"],
            (("pipelines.kubeflow.org",), ("jobs",)): ["create", "delete", "list"],
        }
        binding = find(objects, "RoleBinding")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        job = find(objects, "Job")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": NAMESPACE,
                                        "name": pod_spec(job)["serviceAccountName"]}]
    assert not kinds(render_chart({"rbac": {"create": False}})) & {"Role", "RoleBinding"}


def assert_restricted(obj: dict) -> None:
    """The restricted Pod Security profile, plus read-only root and resources on every container."""
    spec, where = pod_spec(obj), f"{obj['kind']}/{obj['metadata']['name']}"
    pod_sc = spec.get("securityContext", {})
    assert spec.get("automountServiceAccountToken") is False, where
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
    assert all("hostPath" not in v for v in spec.get("volumes", [])), where
    for container in pod_containers(obj):
        sc, name = container["securityContext"], f"{where} {container['name']}"
        assert (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")) is True, name
        assert sc.get("runAsUser", pod_sc.get("runAsUser")) == 1000, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name
        assert (sc.get("seccompProfile") or pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert not sc.get("privileged"), name
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"]), name


def test_job_pod_is_restricted(default_objects, full_objects):
    for objects in (default_objects, full_objects):
        job = find(objects, "Job")
        assert_restricted(job)
        assert {m["mountPath"] for c in pod_containers(job) for m in c["volumeMounts"]} >= {"/tmp", "/home/rstar"}
    placed = pod_spec(find(full_objects, "Job"))
    assert placed["nodeSelector"] == {"cloud.google.com/gke-nodepool": "cpu"}
    assert placed["tolerations"][0]["key"] == "dedicated"
    assert placed["imagePullSecrets"] == [{"name": "registry-credentials"}]


def test_job_is_a_hook_with_ttl_and_backoff(default_objects):
    job = find(default_objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400 and job["spec"]["backoffLimit"] == 2


def test_only_the_job_gets_a_token_and_only_for_kfp(default_objects):
    service_account = find(default_objects, "ServiceAccount")
    assert service_account["automountServiceAccountToken"] is False
    spec = pod_spec(find(default_objects, "Job"))
    assert spec["serviceAccountName"] == service_account["metadata"]["name"]
    (token,) = [v for v in spec["volumes"] if "projected" in v]
    (source,) = token["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    for container in pod_containers(find(default_objects, "Job")):
        env = {e["name"]: e.get("value") for e in container["env"]}
        mount = next(m for m in container["volumeMounts"] if m["name"] == token["name"])
        assert env["KF_PIPELINES_SA_TOKEN_PATH"] == f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in command and args ($$ escapes a dollar)."""
    def replace(match):
        if match.group(0) == "$$":
            return "$"
        assert match.group(1) in env, f"$({match.group(1)}) is not defined in the container's environment"
        return env[match.group(1)]
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, arg)


def job_invocations(objects: list[dict]) -> dict[str, list[str]]:
    """Each job container's `rstar` argv after the kubelet expanded it from its ConfigMap."""
    config_maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    invocations = {}
    for container in pod_containers(find(objects, "Job")):
        env = {}
        for source in container.get("envFrom", []):
            env.update(config_maps[source["configMapRef"]["name"]])
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
        assert container["command"] == ["rstar"]
        invocations[container["name"]] = [expand(a, env) for a in container["args"]]
    return invocations


def parse_cli(argv: list[str]):
    from rstar_math.cli import build_parser

    return build_parser().parse_args(argv)


def compiled_pipeline(file: str) -> dict:
    """The pipeline spec of a compiled pipeline, by its path inside the images (/app/pipelines/...)."""
    path = ROOT / "pipelines" / Path(file).name
    assert file == f"/app/pipelines/{path.name}" and path.exists(), file
    return next(yaml.safe_load_all(path.read_text()))


def test_upload_both_pipelines_then_schedule_with_max_concurrency_one_and_the_cron(full_objects):
    from rstar_math.orchestration.operator import parse_params

    job = find(full_objects, "Job")
    assert [c["name"] for c in pod_spec(job)["initContainers"]] == ["upload-self-evolution", "upload-nightly"]
    assert [c["name"] for c in pod_spec(job)["containers"]] == ["schedule"]
    calls = job_invocations(full_objects)
    host = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    for step, file, name in (("upload-self-evolution", "/app/pipelines/self_evolution.yaml", "rstar-self-evolution"),
                             ("upload-nightly", "/app/pipelines/nightly_re_evolution.yaml", "rstar-nightly")):
        upload = parse_cli(calls[step])
        assert (upload.kfp_command, upload.pipeline_file, upload.name, upload.version, upload.namespace,
                upload.host) == ("upload", file, name, "0.1.0-r1", NAMESPACE, host)
    schedule = parse_cli(calls["schedule"])
    assert schedule.kfp_command == "schedule" and schedule.max_concurrency == 1
    assert (schedule.cron, schedule.name, schedule.experiment, schedule.pipeline_name, schedule.namespace) == (
        "0 30 1 * * *", "nightly-evolution", "rstar-nightly", "rstar-nightly", NAMESPACE)
    assert parse_params(schedule.param) == {
        "problem_prefix": "s3://rstar-prod/incoming/",
        "registry": "s3://rstar-prod/registry/promoted.json",
        "promotion_gate": 0.02,
        "preset": "paper",
        "config_overrides": "search.candidates=4\ntrain.epochs=1",
        "base_model": "s3://rstar-prod/models/base",
        "eval_problems": "s3://rstar-prod/problems/math500.jsonl",
        "storage_root": "s3://rstar-prod/nightly",
        "rounds": 2,
        "shards": 16,
        "cpu_image": "registry.example.com/ml/rstar-cpu:0.2.0",
        "gpu_image": "registry.example.com/ml/rstar-gpu-rollout:0.2.0",
        "train_image": "registry.example.com/ml/rstar-train:0.2.0-cu130",
        "accelerator_type": "nvidia.com/gpu",
        "rollout_gpus": 2,
        "train_gpus": 8,
        "gpu_node_selector": {"cloud.google.com/gke-nodepool": "h100"},
        "gpu_tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "cpu_node_selector": {"cloud.google.com/gke-nodepool": "cpu"},
        "cpu_tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}],
        "s3_secret": "rstar-prod-s3",
        "s3_config_map": "rstar-s3",
    }


def test_pipeline_files_and_names_are_the_compiled_ones(default_objects):
    data = find(default_objects, "ConfigMap", "rstar-math-nightly")["data"]
    for prefix in ("SELF_EVOLUTION", "NIGHTLY"):
        spec = compiled_pipeline(data[f"{prefix}_FILE"])
        assert spec["pipelineInfo"]["name"] == data[f"{prefix}_PIPELINE"]


def test_schedule_parameters_are_the_nightly_pipelines_inputs(default_objects):
    from rstar_math.orchestration.operator import parse_params

    calls = job_invocations(default_objects)
    schedule = parse_cli(calls["schedule"])
    nightly = parse_cli(calls["upload-nightly"])
    assert schedule.pipeline_name == nightly.name
    params = parse_params(schedule.param)
    inputs = {name: p["parameterType"] for name, p in
              compiled_pipeline(nightly.pipeline_file)["root"]["inputDefinitions"]["parameters"].items()}
    assert set(params) == set(inputs), "the chart's parameters differ from the nightly pipeline's inputs"
    # JSON numbers: a whole number is a valid NUMBER_DOUBLE.
    python_type = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": (float, int), "STRUCT": dict,
                   "LIST": list, "BOOLEAN": bool}
    for name, value in params.items():
        assert isinstance(value, python_type[inputs[name]]), f"{name}={value!r} is not {inputs[name]}"
    assert params["s3_config_map"] == "rstar-math-s3" and params["storage_root"] == "s3://rstar-math/runs"
    assert params["registry"] == "s3://rstar-math/registry/promoted.json"
    assert params["problem_prefix"] == "s3://rstar-math/incoming/"
    assert params["promotion_gate"] == 0.0 and isinstance(params["promotion_gate"], float)


def test_schedule_can_be_left_out():
    objects = render_chart({"schedule": {"enabled": False}})
    spec = pod_spec(find(objects, "Job"))
    assert [c["name"] for c in spec["initContainers"]] == ["upload-self-evolution"]
    assert [c["name"] for c in spec["containers"]] == ["upload-nightly"]
    assert not kinds(render_chart({"uploadJob": {"enabled": False}})) & {"Job", "ServiceAccount", "Role"}


DNS_RULE = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
KFP_PORTS = [{"port": 8887, "protocol": "TCP"}, {"port": 8080, "protocol": "TCP"}]
KFP_NAMESPACE_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}}
KFP_RULE = {"to": [{**KFP_NAMESPACE_PEER, "podSelector": {}}], "ports": KFP_PORTS}


def assert_model_code_policy(policy: dict, egress: list[dict]) -> None:
    """Selects the model-code pods, denies all ingress, allows exactly `egress`."""
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {MODEL_CODE_LABEL: "true"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in spec
    assert spec["egress"] == egress
    assert all(rule["to"] for rule in egress), "an egress rule without peers allows every destination"


def test_network_policy_allows_only_dns_object_store_and_kfp(full_objects):
    assert_model_code_policy(find(full_objects, "NetworkPolicy"), [
        DNS_RULE,
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}, {"ipBlock": {"cidr": "192.168.50.10/32"}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}},
                 "podSelector": {"matchLabels": {"app": "minio"}}}],
         "ports": [{"port": 9000, "protocol": "TCP"}]},
        {"to": [{**KFP_NAMESPACE_PEER, "podSelector": {"matchLabels": {"application-crd-id": "kubeflow-pipelines"}}}],
         "ports": KFP_PORTS},
        {"to": [{"ipBlock": {"cidr": "172.16.0.2/32"}}], "ports": [{"port": 443, "protocol": "TCP"}]},
    ])


def test_network_policy_defaults_fail_closed(default_objects):
    # Without an object-store peer only DNS and KFP are reachable, and NOTES.txt says so.
    assert_model_code_policy(find(default_objects, "NetworkPolicy"), [DNS_RULE, KFP_RULE])
    with helm.Chart.load(str(CHART)) as chart:
        notes = chart.render(None, name=RELEASE, namespace=NAMESPACE)["rstar-math/templates/NOTES.txt"]
    assert "networkPolicy.objectStore has no CIDR and no selector" in notes
    in_cluster = render_chart({"networkPolicy": {"objectStore": {
        "podSelector": {"matchLabels": {"app": "minio"}}, "ports": [{"port": 9000, "protocol": "TCP"}]}}})
    assert find(in_cluster, "NetworkPolicy")["spec"]["egress"][1] == {
        "to": [{"podSelector": {"matchLabels": {"app": "minio"}}}], "ports": [{"port": 9000, "protocol": "TCP"}]}
    assert "NetworkPolicy" not in kinds(render_chart({"networkPolicy": {"enabled": False}}))


def test_runtime_class_policy_only_when_set(default_objects, full_objects):
    assert not any(o["kind"].startswith("MutatingAdmissionPolicy") for o in default_objects)
    policy = find(full_objects, "MutatingAdmissionPolicy")
    binding = find(full_objects, "MutatingAdmissionPolicyBinding")
    assert "namespace" not in policy["metadata"] and NAMESPACE in policy["metadata"]["name"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    (mutation,) = policy["spec"]["mutations"]
    assert mutation["patchType"] == "ApplyConfiguration"
    assert mutation["applyConfiguration"]["expression"] == 'Object{spec: Object.spec{runtimeClassName: "gvisor"}}'
    assert MODEL_CODE_LABEL in policy["spec"]["matchConditions"][0]["expression"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["matchResources"] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
        "objectSelector": {"matchLabels": {MODEL_CODE_LABEL: "true"}}}


# ---------------------------------------------------------------------------------------------
# Kustomize: the same objects as the chart
# ---------------------------------------------------------------------------------------------

def comparable(obj: dict) -> dict:
    """An object without what legitimately differs between Helm and kustomize output."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("annotations", None)
    obj["metadata"].pop("labels", None)
    if pod_spec(obj) is not None:
        obj["spec"]["template"]["metadata"].pop("labels", None)
    return obj


def test_kustomize_base_matches_the_chart(default_objects):
    base = kustomize_build(MANIFESTS / "base")
    chart = {(o["kind"], o["metadata"]["name"]): o for o in default_objects}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in base}
    assert set(ours) == set(chart)
    for key in ("Role", "rstar-math-kfp"), ("RoleBinding", "rstar-math-kfp"), ("Job", "rstar-math-upload"), \
            ("ServiceAccount", "rstar-math-upload"), ("ConfigMap", "rstar-math-s3"), \
            ("ConfigMap", "rstar-math-nightly"), ("NetworkPolicy", "rstar-math-model-code"):
        assert comparable(ours[key]) == comparable(chart[key]), key
    (ours_data, ours_s3), (chart_data, chart_s3) = launcher(base), launcher(default_objects)
    assert ours_s3 == chart_s3 and ours_data["defaultPipelineRoot"] == chart_data["defaultPipelineRoot"]
    for obj in base:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rstar-math"


def test_prod_overlay(overlays):
    objects = overlays["prod"]
    assert find(objects, "MutatingAdmissionPolicy")["apiVersion"] == "admissionregistration.k8s.io/v1"
    job = find(objects, "Job")
    assert {c["image"] for c in pod_containers(job)} == {"registry.example.com/ml/rstar-cpu:0.1.0"}
    assert_restricted(job)
    https = [{"port": 443, "protocol": "TCP"}]
    assert_model_code_policy(find(objects, "NetworkPolicy"), [
        DNS_RULE, KFP_RULE, {"to": [{"ipBlock": {"cidr": "10.0.128.0/24"}}], "ports": https},
        {"to": [{"ipBlock": {"cidr": "10.0.0.2/32"}}], "ports": https}])
    data, s3 = launcher(objects)
    assert data["defaultPipelineRoot"] == "s3://rstar-math-prod/kfp" and s3["region"] == "eu-west-1"
    params = parse_cli(job_invocations(objects)["schedule"]).param
    from rstar_math.orchestration.operator import parse_params

    assert parse_params(params)["gpu_tolerations"][0]["key"] == "nvidia.com/gpu"
    assert not [o for o in objects if o["kind"] == "Secret"], "production credentials never come from the manifests"


def test_dev_overlay(overlays):
    objects = overlays["dev"]
    secret = find(objects, "Secret", "rstar-s3")
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(values) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all("not-a-secret" in v for v in values.values())
    assert "FAKE DEV-ONLY CREDENTIALS" in (MANIFESTS / "overlays" / "dev" / "kustomization.yaml").read_text()
    server = find(objects, "Deployment", "rstar-s3-dev")
    assert_restricted(server)
    assert server["spec"]["selector"]["matchLabels"].items() <= \
        server["spec"]["template"]["metadata"]["labels"].items()
    service = find(objects, "Service", "rstar-s3-dev")
    assert service["spec"]["selector"].items() <= server["spec"]["template"]["metadata"]["labels"].items()
    assert_model_code_policy(find(objects, "NetworkPolicy"), [
        DNS_RULE, KFP_RULE, {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rstar-s3-dev"}}}],
                             "ports": [{"port": 9000, "protocol": "TCP"}]}])
    endpoint = find(objects, "ConfigMap", "rstar-math-s3")["data"]["AWS_ENDPOINT_URL"]
    assert endpoint == "http://rstar-s3-dev.rstar-math.svc.cluster.local:9000"
    assert launcher(objects)[1]["endpoint"] == endpoint.removeprefix("http://")
    rclone = server["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in rclone["env"] if "valueFrom" in e}
    assert env == {"AWS_ACCESS_KEY_ID": "rstar-s3", "AWS_SECRET_ACCESS_KEY": "rstar-s3"}


def real_kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(real_kustomize() is None, reason="no kustomize or kubectl on PATH")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_matches_real_binary(overlays, overlay):
    out = subprocess.run([*real_kustomize(), str(MANIFESTS / "overlays" / overlay)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    real = [d for d in yaml.safe_load_all(out) if d]
    for obj in real:
        # Kustomize releases whose built-in schema predates MutatingAdmissionPolicy take it for
        # namespaced and add a namespace; the API server drops it on cluster-scoped objects.
        if obj["kind"] in CLUSTER_SCOPED:
            obj["metadata"].pop("namespace", None)
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(real, key=key) == sorted(overlays[overlay], key=key)


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------

def dockerfile_stages(path: Path) -> list[dict]:
    """Stages of a Dockerfile: its FROM image and alias, and its instructions (continuations joined)."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    stages = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.match(r"^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", rest.strip(), re.IGNORECASE)
            stages.append({"image": match.group(1), "alias": match.group(2), "instructions": []})
        else:
            stages[-1]["instructions"].append((instruction, rest.strip()))
    return stages


DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
# The runtime stage of gpu-rollout keeps a C compiler and Python headers on purpose: Triton
# compiles its CUDA launcher stub at run time. Everything else: no build tools in a runtime.
RUNTIME_BUILD_TOOLS_ALLOWED = {"gpu-rollout": {"gcc", "libc6-dev", "python3.12-dev"}}
BUILD_TOOLS = {"build-essential", "gcc", "g++", "make", "cmake", "git", "libc6-dev", "python3-dev",
               "python3.12-dev", "cuda-nvcc-12-8", "cuda-toolkit-12-8", "ninja-build", "curl", "wget"}


def test_three_images():
    assert {p.parent.name for p in DOCKERFILES} == {"cpu", "gpu-rollout", "train"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile(dockerfile):
    stages = dockerfile_stages(dockerfile)
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    aliases = {s["alias"] for s in stages if s["alias"]}
    for stage in stages:
        image = stage["image"]
        if image in aliases:
            continue
        name, _, tag = image.split("@")[0].rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"FROM {image}: pin an exact version tag"
    builder, runtime = stages[0], stages[-1]
    instructions = [i for s in stages for i in s["instructions"]]

    # The package from the repository, into a venv that the runtime copies.
    copies = [rest for kind, rest in builder["instructions"] if kind == "COPY"]
    assert any(c.startswith("pyproject.toml") for c in copies) and any(c.startswith("src ") for c in copies)
    assert any(kind == "RUN" and re.search(r"pip install (--constraint \S+ )?\"?\.(\[\w+\])?\"?$", rest)
               for kind, rest in builder["instructions"]), "pip install of the copied repository"
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime["instructions"]
    assert ("COPY", "pipelines /app/pipelines") in runtime["instructions"]
    assert ("ENV", "PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1") in builder["instructions"]

    # A non-root numeric user with a home of its own, last.
    users = [rest for kind, rest in runtime["instructions"] if kind == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "final USER: a numeric non-root uid"
    assert users[-1] == "1000:1000"
    last_user = max(i for i, (kind, _) in enumerate(runtime["instructions"]) if kind == "USER")
    assert all(kind != "RUN" for kind, _ in runtime["instructions"][last_user:]), "nothing runs as root after USER"
    assert any(kind == "RUN" and "useradd --uid 1000" in rest and "--create-home" in rest
               for kind, rest in runtime["instructions"])

    # No build tools in the runtime (except what the image documents it needs).
    installed = set()
    for kind, rest in runtime["instructions"]:
        if kind == "RUN" and "apt-get install" in rest:
            installed |= set(re.findall(r"[\w.+-]+", rest.split("apt-get install", 1)[1].split("&&")[0])) - {"y"}
    allowed = RUNTIME_BUILD_TOOLS_ALLOWED.get(dockerfile.parent.name, set())
    assert not (installed & BUILD_TOOLS) - allowed, f"build tools in the runtime: {(installed & BUILD_TOOLS) - allowed}"
    assert "devel" not in runtime["image"]

    # No secrets: only non-secret build arguments, no credential-looking variables.
    args = {rest.split("=")[0] for kind, rest in instructions if kind == "ARG"}
    assert args == {"RSTAR_IMAGE", "RSTAR_GIT_COMMIT"}
    env_names = {m for kind, rest in instructions if kind == "ENV" for m in re.findall(r"([A-Z_][A-Z0-9_]*)=", rest)}
    secretish = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AUTH|AWS_")
    assert not {n for n in env_names | args if secretish.search(n)}
    assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN", dockerfile.read_text())
    runtime_env = " ".join(rest for kind, rest in runtime["instructions"] if kind == "ENV")
    assert "RSTAR_IMAGE=${RSTAR_IMAGE}" in runtime_env and "RSTAR_GIT_COMMIT=${RSTAR_GIT_COMMIT}" in runtime_env
    assert any(kind == "ARG" and rest.startswith(f"RSTAR_IMAGE=ghcr.io/rstar-math/rstar-{dockerfile.parent.name}:")
               for kind, rest in runtime["instructions"])


def test_torch_and_vllm_come_first_from_the_right_place():
    def runs(name):
        return [rest for kind, rest in dockerfile_stages(IMAGES / name / "Dockerfile")[0]["instructions"]
                if kind == "RUN" and "pip install" in rest]

    assert "https://download.pytorch.org/whl/cpu torch==" in runs("cpu")[0]
    assert re.search(r"https://download\.pytorch\.org/whl/cu1\d\d torch==", runs("train")[0])
    assert "DS_BUILD_OPS=0" in runs("train")[1]
    rollout = runs("gpu-rollout")
    assert rollout[0].startswith("pip install vllm==") and "pip freeze > /opt/venv/vllm-constraints.txt" in rollout[0]
    assert rollout[-1] == "pip install --constraint /opt/venv/vllm-constraints.txt ."


def test_images_readme_has_the_build_commands():
    readme = (IMAGES / "README.md").read_text()
    assert ("docker build -f images/cpu/Dockerfile -t ghcr.io/rstar-math/rstar-cpu:0.1.0 \\\n"
            "  --build-arg RSTAR_IMAGE=ghcr.io/rstar-math/rstar-cpu:0.1.0 \\\n"
            "  --build-arg RSTAR_GIT_COMMIT=$(git rev-parse HEAD) .") in readme
    for name in ("cpu", "gpu-rollout", "train"):
        assert f"-f images/{name}/Dockerfile" in readme


def test_chart_defaults_name_the_images_the_pipeline_defaults_to(default_objects):
    from rstar_math.orchestration import components

    params = find(default_objects, "ConfigMap", "rstar-math-nightly")["data"]
    assert [yaml.safe_load(params[k]) for k in ("cpu_image", "gpu_image", "train_image")] == \
        [components.CPU_IMAGE, components.GPU_IMAGE, components.TRAIN_IMAGE]
