"""Nightly re-evolution: new problem files in, the last promoted models continued, a gated promotion out.

The registry is a directory in the bucket (next to its pointer file):

    s3://bucket/rstar/registry/promoted.json      the pointer: the promoted policy, PPM and verified trees
                                                   (URIs and sha256), the metric that earned the promotion,
                                                   and the pointers it replaced
    s3://bucket/rstar/registry/consumed.json      every problem file ever taken in (URI, sha256, run)
    s3://bucket/rstar/registry/problem_index/     one Parquet part per run: the problem ids it searched

    intake_new_problems(prefix, registry, train_out, held_out_out, config=cfg, context=ctx)  -> count
    start_from_registry(registry, base_model, policy_out, ppm_out, previous_out, config=cfg, context=ctx)
    promote(registry, history, policy, ppm, verified, train, out, gate=0.0, context=ctx)

Files are marked consumed only by `promote`, at the end of a run that got that far, so a
failed night leaves them for the next one. Problems are deduplicated against every
earlier night. The pointer moves only when the run's held-out greedy accuracy is not
below the promoted one by more than `gate`; it is replaced atomically.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import time
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from rstar_math.artifacts import ArtifactRef, open_artifact, pin, write_artifact
from rstar_math.config import RunConfig
from rstar_math.data.problems import load_problems_with_report, merge_problem_sets
from rstar_math.data.schemas import METRICS, PROBLEMS, VERIFIED_TREES, read_table, write_table
from rstar_math.lineage import RunContext, content_digest
from rstar_math.stages.intake import PROBLEMS_FILE, intake
from rstar_math.store import join, local_copy, normalize, parent, store_for

POINTER_FORMAT = 1
PROBLEM_SUFFIXES = (".jsonl", ".json", ".parquet")
NEW_FILES = "new_files.json"


def read_pointer(registry: str) -> dict | None:
    """The promoted models, or None before the first promotion."""
    store = store_for(registry)
    if not store.exists(registry):
        return None
    pointer = json.loads(store.read_bytes(registry))
    if pointer.get("format") != POINTER_FORMAT:
        raise ValueError(f"{registry}: not a registry pointer of format {POINTER_FORMAT}")
    return pointer


def _consumed(registry: str) -> dict:
    uri = join(parent(registry), "consumed.json")
    store = store_for(uri)
    return json.loads(store.read_bytes(uri)) if store.exists(uri) else {"files": {}}


def _seen_problem_ids(registry: str) -> set[str]:
    index = join(parent(registry), "problem_index")
    store = store_for(index)
    seen: set[str] = set()
    for name in store.list_files(index):
        with local_copy(join(index, name)) as path:
            seen.update(pq.read_table(path).column("problem_id").to_pylist())
    return seen


def new_problem_files(prefix: str, registry: str) -> list[tuple[str, str]]:
    """(URI, sha256) of problem files under `prefix` not consumed before (a changed file counts as new)."""
    store = store_for(prefix)
    consumed = _consumed(registry)["files"]
    out = []
    for name in store.list_files(prefix):
        if not name.endswith(PROBLEM_SUFFIXES) or posixpath.basename(name).startswith("."):
            continue
        uri = join(prefix, name)
        sha = content_digest(uri)
        if consumed.get(normalize(uri), {}).get("sha256") != sha:
            out.append((normalize(uri), sha))
    return out


def intake_new_problems(
    prefix: str,
    registry: str,
    train_out: str | ArtifactRef,
    held_out_out: str | ArtifactRef,
    *,
    config: RunConfig,
    context: RunContext,
) -> int:
    """Tonight's training problems (new files, problems never searched before) and the fixed held-out set."""
    if not config.data.eval:
        raise ValueError("nightly runs need a fixed held-out benchmark (data.eval) to compare nights with")
    files = new_problem_files(prefix, registry)
    seen = _seen_problem_ids(registry)
    tables = [load_problems_with_report(uri)[0] for uri, _ in files]
    merged = merge_problem_sets(tables) if tables else PROBLEMS.schema.empty_table()
    fresh = merged.filter(pa.array([pid not in seen for pid in merged.column("problem_id").to_pylist()], pa.bool_()))
    with write_artifact(train_out, kind="problems", stage="nightly_intake", context=context,
                        inputs={f"file-{i}": uri for i, (uri, _) in enumerate(files)},
                        params={"prefix": prefix, "registry": registry}) as out_dir:
        write_table(fresh, out_dir / PROBLEMS_FILE, PROBLEMS)
        (out_dir / NEW_FILES).write_text(json.dumps(
            {"files": [{"uri": u, "sha256": s} for u, s in files], "read": merged.num_rows,
             "already_seen": merged.num_rows - fresh.num_rows}, indent=2))
    intake(list(config.data.eval), held_out_out, context=context)
    return fresh.num_rows


def _copy_artifact(source: str | ArtifactRef, out: str | ArtifactRef, *, kind: str, context: RunContext,
                   role: str) -> None:
    """A new artefact with the files of `source` (hash-checked), its lineage pointing back to it."""
    with write_artifact(out, kind=kind, stage="registry_start", context=context, inputs={role: source}) as out_dir, \
            open_artifact(source) as (path, _):
        for item in path.iterdir():
            if item.name != "_lineage.json":
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, out_dir / item.name)


def start_from_registry(
    registry: str,
    base_model: str | ArtifactRef,
    policy_out: str | ArtifactRef,
    ppm_out: str | ArtifactRef,
    previous_out: str | ArtifactRef,
    *,
    config: RunConfig,
    context: RunContext,
) -> bool:
    """The models tonight's first round searches with: the promoted ones, or the base model on the first night.

    Returns whether a promoted PPM exists (without one, search stays terminal-guided).
    """
    pointer = read_pointer(registry)
    if pointer is not None:
        _copy_artifact(pointer["policy"]["uri"], policy_out, kind="policy", context=context, role="promoted_policy")
        _copy_artifact(pointer["ppm"]["uri"], ppm_out, kind="ppm", context=context, role="promoted_ppm")
        _copy_artifact(pointer["verified"]["uri"], previous_out, kind="verified_trees", context=context,
                       role="promoted_verified")
        return True
    from rstar_math.models.ppm import ProcessPreferenceModel

    base = ArtifactRef.of(base_model)
    _copy_artifact(base, policy_out, kind="policy", context=context, role="base_model")
    with write_artifact(ppm_out, kind="ppm", stage="registry_start", context=context, inputs={"base_model": base},
                        params={"trained": False}) as out_dir, open_artifact(base) as (path, _):
        ProcessPreferenceModel.from_policy(str(path), device="cpu", dtype="float32").save_pretrained(out_dir)
        (out_dir / "training_result.json").write_text(json.dumps({"steps": 0, "skipped": "no promoted PPM yet"}))
    with write_artifact(previous_out, kind="verified_trees", stage="registry_start", context=context) as out_dir:
        write_table(VERIFIED_TREES.schema.empty_table(), out_dir / "verified_trees.parquet", VERIFIED_TREES)
    return False


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str
    value: float | None
    promoted_value: float | None


def _final_accuracy(history: ArtifactRef) -> tuple[int, float | None]:
    with open_artifact(history) as (path, _):
        rows = read_table(path / "history.parquet", METRICS).to_pylist()
    greedy = [r for r in rows if (r["benchmark"], r["method"], r["metric"]) == ("held_out", "greedy", "accuracy")]
    if not greedy:
        return 0, None
    last = max(greedy, key=lambda r: r["round"])
    return last["round"], last["value"]


def promote(
    registry: str,
    history: str | ArtifactRef,
    policy: str | ArtifactRef,
    ppm: str | ArtifactRef,
    verified: str | ArtifactRef,
    train: str | ArtifactRef,
    out: str | ArtifactRef,
    *,
    gate: float,
    context: RunContext,
) -> Promotion:
    """Move the registry pointer if the run is good enough; mark tonight's files and problems as consumed."""
    history, policy, ppm, verified, train = (ArtifactRef.of(x) for x in (history, policy, ppm, verified, train))
    round_, value = _final_accuracy(history)
    pointer = read_pointer(registry)
    promoted_value = pointer["metric"]["value"] if pointer else None
    if value is None:
        decision = Promotion(False, "the run measured no held-out greedy accuracy", None, promoted_value)
    elif promoted_value is not None and value < promoted_value - gate:
        decision = Promotion(False, f"held-out greedy accuracy {value:.4f} is below the promoted {promoted_value:.4f} "
                                    f"by more than the gate {gate:.4f}", value, promoted_value)
    else:
        decision = Promotion(True, "first promotion" if pointer is None else
                             f"held-out greedy accuracy {value:.4f} against the promoted {promoted_value:.4f}",
                             value, promoted_value)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if decision.promoted:
        entries = {name: {"uri": normalize(ref.uri), "sha256": pin(ref).sha256} for name, ref in
                   (("policy", policy), ("ppm", ppm), ("verified", verified))}
        earlier = ([{k: pointer[k] for k in ("policy", "ppm", "metric", "run_id", "promoted_at")}] + pointer["history"]
                   if pointer else [])
        new_pointer = {"format": POINTER_FORMAT, **entries, "run_id": context.run_id, "promoted_at": now,
                       "metric": {"benchmark": "held_out", "method": "greedy", "round": round_, "value": value},
                       "history": earlier[:50]}
        store_for(registry).write_bytes(registry, json.dumps(new_pointer, indent=2).encode())

    # Tonight's files and problems are consumed whether or not the models were promoted.
    consumed = _consumed(registry)
    with open_artifact(train) as (path, _):
        new_files = json.loads((path / NEW_FILES).read_text())["files"]
        problem_ids = read_table(path, PROBLEMS).column("problem_id").to_pylist()
    for item in new_files:
        consumed["files"][item["uri"]] = {"sha256": item["sha256"], "run_id": context.run_id, "consumed_at": now}
    registry_dir = parent(registry)
    consumed_uri = join(registry_dir, "consumed.json")
    store_for(consumed_uri).write_bytes(consumed_uri, json.dumps(consumed, indent=2, sort_keys=True).encode())
    index_uri = join(registry_dir, "problem_index", f"{context.run_id}.parquet")
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"problem_id": pa.array(problem_ids, pa.string())}), buffer)
    store_for(index_uri).write_bytes(index_uri, buffer.getvalue().to_pybytes())

    with write_artifact(out, kind="promotion", stage="promote", context=context,
                        inputs={"history": history, "policy": policy, "ppm": ppm, "verified": verified, "train": train},
                        params={"registry": registry, "gate": gate}) as out_dir:
        (out_dir / "promotion.json").write_text(json.dumps(asdict(decision), indent=2))
    return decision


def is_pointer(uri: str) -> bool:
    """Whether `uri` is a registry pointer file (rather than an artefact directory)."""
    store = store_for(uri)
    if not uri.endswith(".json") or not store.exists(uri):
        return False
    try:
        return json.loads(store.read_bytes(uri)).get("format") == POINTER_FORMAT
    except (ValueError, AttributeError):
        return False


def audit_pointer(registry: str) -> dict:
    """Lineage audits of the promoted policy, PPM and verified trees, each also checked against the hash the
    pointer recorded when it promoted them."""
    from rstar_math.lineage import audit, read_record

    pointer = read_pointer(registry)
    reports = {}
    for name in ("policy", "ppm", "verified"):
        entry = pointer[name]
        report = audit(entry["uri"])
        record = read_record(entry["uri"])
        if record is not None and record.sha256 != entry["sha256"]:
            node = report.nodes[report.target]
            report.nodes[report.target] = type(node)(node.uri, node.record, node.sha256, node.problems + (
                f"changed since it was promoted: sha256 {record.sha256[:12]} != pointer's {entry['sha256'][:12]}",),
                node.notes)
        reports[f"promoted {name} ({entry['uri']})"] = report
    return reports
