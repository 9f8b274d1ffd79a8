"""Lineage: every artefact's record of where it came from, and the audit that checks the chain.

record.py   the record, hashing, code version
audit.py    walk from any artefact back to its roots, verifying every hash
"""

from rstar_math.lineage.audit import AuditNode, AuditReport, audit
from rstar_math.lineage.record import (
    LINEAGE_FILE,
    FileDigest,
    InputRef,
    LineageError,
    LineageRecord,
    RunContext,
    content_digest,
    input_ref,
    read_record,
)

__all__ = [
    "LINEAGE_FILE",
    "AuditNode",
    "AuditReport",
    "FileDigest",
    "InputRef",
    "LineageError",
    "LineageRecord",
    "RunContext",
    "audit",
    "content_digest",
    "input_ref",
    "read_record",
]
