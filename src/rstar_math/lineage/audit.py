"""Walk an artefact's lineage back to its roots and verify every hash on the way.

    report = audit("s3://bucket/runs/nightly-42/round-4/policy")
    print(report.render())
    report.ok   # False if anything was tampered with, replaced or lost

For each artefact with a record: every file is re-hashed against the record, and
every input's current hash is compared with the hash recorded when it was
consumed. Inputs without a record (the base model, problem files) are the roots;
their content is hashed and compared the same way. Nothing is trusted silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rstar_math.lineage.record import (
    LineageError,
    LineageRecord,
    content_digest,
    digest_files,
    manifest_digest,
    read_record,
)
from rstar_math.store import normalize


@dataclass(frozen=True)
class AuditNode:
    uri: str
    record: LineageRecord | None  # None for a root (external input)
    sha256: str | None  # current content hash; None when missing
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass
class AuditReport:
    target: str
    nodes: dict[str, AuditNode] = field(default_factory=dict)  # in walk order, target first

    @property
    def ok(self) -> bool:
        return not any(node.problems for node in self.nodes.values())

    @property
    def problems(self) -> list[str]:
        return [f"{uri}: {p}" for uri, node in self.nodes.items() for p in node.problems]

    @property
    def roots(self) -> list[str]:
        return [uri for uri, node in self.nodes.items() if node.record is None]

    def render(self) -> str:
        """One line per artefact, target first and roots last; inputs refer to artefacts by number."""
        number = {uri: i + 1 for i, uri in enumerate(self.nodes)}
        lines: list[str] = []
        for uri, node in self.nodes.items():
            status = "OK" if not node.problems else "FAILED"
            sha = (node.sha256 or "missing")[:16]
            if node.record is None:
                lines.append(f"#{number[uri]} root  sha256={sha}  {status}  {uri}")
            else:
                r = node.record
                where = f"round {r.round}" if r.round is not None else "no round"
                code = r.package_version + (f"@{r.git_commit[:12]}" if r.git_commit else "")
                lines.append(f"#{number[uri]} {r.kind} from {r.stage}, {where}  sha256={sha}  {status}  {uri}")
                inputs = ", ".join(f"{ref.role or 'input'}=#{number[ref.uri]}" for ref in r.inputs)
                lines.append(f"     inputs: {inputs or '-'}")
                lines.append(f"     run {r.run_id}, config {(r.config_hash or '-')[:12]}, code {code}, "
                             f"image {r.image or '-'}, written {r.created_at}")
            lines += [f"     !! {problem}" for problem in node.problems]
            lines += [f"     note: {note}" for note in node.notes]
        verdict = "all hashes verified" if self.ok else f"{len(self.problems)} problem(s)"
        lines.append(f"{len(self.nodes)} artefact(s), {len(self.roots)} root(s): {verdict}")
        return "\n".join(lines)


def _check_artifact(uri: str, record: LineageRecord) -> tuple[str, list[str], list[str]]:
    problems, notes = [], []
    files = digest_files(uri)
    actual = {f.path: f for f in files}
    expected = {f.path: f for f in record.files}
    for path in sorted(expected.keys() - actual.keys()):
        problems.append(f"file {path} is missing")
    for path in sorted(actual.keys() - expected.keys()):
        problems.append(f"file {path} is not in the lineage record")
    for path in sorted(expected.keys() & actual.keys()):
        if actual[path].sha256 != expected[path].sha256:
            problems.append(
                f"file {path} was modified: sha256 {actual[path].sha256[:12]} != recorded {expected[path].sha256[:12]}"
            )
    if manifest_digest(record.files) != record.sha256:
        problems.append("the record's sha256 does not match its own file list (the record was edited)")
    if record.uri != uri:
        notes.append(f"recorded at {record.uri}; read from here (copied or moved)")
    return manifest_digest(files), problems, notes


def audit(uri: str, *, max_nodes: int = 100_000) -> AuditReport:
    """Verify the artefact at `uri` and everything it was made from."""
    target = normalize(uri)
    found: dict[str, tuple[LineageRecord | None, str | None, list[str], list[str]]] = {}
    queue = [target]
    while queue:  # breadth-first, so the report lists the target first and roots last
        current = queue.pop(0)
        if current in found:
            continue
        if len(found) >= max_nodes:
            raise RuntimeError(f"lineage of {target} has more than {max_nodes} artefacts; refusing to continue")
        record, sha, problems, notes = None, None, [], []
        try:
            record = read_record(current)
        except LineageError as exc:
            problems.append(f"unreadable lineage record: {exc}")
        try:
            if record is not None:
                sha, problems, notes = _check_artifact(current, record)
                queue.extend(ref.uri for ref in record.inputs)
            else:
                sha = content_digest(current)
        except FileNotFoundError:
            problems.append("missing: no file or directory at this URI")
        found[current] = (record, sha, problems, notes)

    # Each consumer pinned its inputs' hashes: an artefact by its record's hash, a root by its content.
    for consumer, (record, _, _, _) in found.items():
        for ref in record.inputs if record else ():
            input_record, input_sha, input_problems, _ = found[ref.uri]
            now = input_record.sha256 if input_record is not None else input_sha
            if now is not None and now != ref.sha256:
                input_problems.append(f"changed since {consumer} consumed it: sha256 {now[:12]} != pinned {ref.sha256[:12]}")

    report = AuditReport(target)
    for node_uri, (record, sha, problems, notes) in found.items():
        report.nodes[node_uri] = AuditNode(node_uri, record, sha, tuple(problems), tuple(notes))
    return report
