"""Problem intake: public math data sets (JSONL, JSON, Parquet) to a PROBLEMS table.

    from rstar_math.data.problems import load_problems, load_problems_with_report, merge_problem_sets

    gsm8k = load_problems("data/gsm8k/train.jsonl")                  # record layout auto-detected
    math500, report = load_problems_with_report("s3://bucket/math500.json")
    mine = load_problems("x.jsonl", mapping={"question": "prompt", "answer": "target"}, source="mine")
    problems = merge_problem_sets([gsm8k, math500, mine])           # de-duplicated across sets

Record layouts, detected from the records' keys (override with `mapping`):

    gsm8k  `question`, `answer`; the final answer is what follows the last '####',
           with thousands separators removed ('1,000' -> '1000').
    math   MATH / MATH500: `problem`, `solution`, optional `answer` (else the content
           of the last \\boxed{...} in `solution`), `level` ('Level 3' or 3), and
           `type` or `subject`, which is appended to the source ('math/Algebra').
    plain  `question`, `answer`, optional `level` and `source` (so PROBLEMS tables
           written by this package load back unchanged).

`problem_id` is a contract shared by every stage and by the generator: see its docstring.
Rows that cannot be used are not fatal: each is reported with its location (JSONL
line, JSON index, Parquet row) in an `IntakeReport`; a file with no usable row raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rstar_math.data.schemas import PROBLEMS, validate

__all__ = [
    "FieldMapping",
    "IntakeReport",
    "LAYOUTS",
    "normalize_question",
    "problem_id",
    "load_problems",
    "load_problems_with_report",
    "merge_problem_sets",
]

log = logging.getLogger(__name__)


def normalize_question(question: str) -> str:
    """Question text as hashed for its id: Unicode NFKC, stripped, whitespace runs collapsed to one space.

    Case is kept: 'Solve for x' and 'solve for X' are different problems.
    """
    return " ".join(unicodedata.normalize("NFKC", question).split())


def problem_id(question: str) -> str:
    """Stable id of a problem: 'p' + the first 16 hex digits of SHA-256 of the UTF-8 `normalize_question(question)`.

    This is a contract: ids are joined across stages, runs and data sets, and the
    generator and intake must agree, so never change it without migrating artefacts.
    Questions that differ only in Unicode compatibility forms or whitespace share an id.
    """
    return "p" + hashlib.sha256(normalize_question(question).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class FieldMapping:
    """Which record keys hold what, and how the final answer is obtained (`layout`)."""

    layout: str  # gsm8k | math | plain
    question: str
    answer: str | None  # math: optional, else boxed from `solution`
    solution: str | None = None
    level: str | None = None
    subject: tuple[str, ...] = ()  # first present one becomes the source detail
    source: str | None = None  # per-record source, plain layout


LAYOUTS: dict[str, FieldMapping] = {
    "gsm8k": FieldMapping("gsm8k", question="question", answer="answer"),
    "math": FieldMapping(
        "math", question="problem", answer="answer", solution="solution", level="level", subject=("type", "subject")
    ),
    "plain": FieldMapping("plain", question="question", answer="answer", level="level", source="source"),
}

# `mapping` keys a caller may override; `subject` takes a key or a list of keys.
_MAPPING_KEYS = {"layout", "question", "answer", "solution", "level", "subject", "source"}

# Keys under which JSON files commonly wrap their list of records.
_JSON_WRAPPERS = ("data", "examples", "problems", "rows", "records", "instances")

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}

# How many records auto-detection looks at, and how many problems an error message lists.
_DETECT_SAMPLE = 50
_SHOW_PROBLEMS = 5


@dataclass(frozen=True)
class IntakeReport:
    """What happened to the rows of one file.

    `malformed` holds (location, reason) pairs; a location is 'file:LINE' for JSONL
    (1-based line number), 'file[INDEX]' for JSON (0-based list index) and
    'file row ROW' for Parquet (0-based). rows_read = rows_kept + duplicates + len(malformed).
    """

    path: str
    layout: str
    rows_read: int
    rows_kept: int
    duplicates: int
    malformed: tuple[tuple[str, str], ...]

    def summary(self) -> str:
        text = (
            f"{self.path}: kept {self.rows_kept} of {self.rows_read} rows ({self.layout}); "
            f"{self.duplicates} duplicate(s), {len(self.malformed)} malformed"
        )
        if self.malformed:
            text += "; " + "; ".join(f"{loc}: {why}" for loc, why in self.malformed[:_SHOW_PROBLEMS])
            if len(self.malformed) > _SHOW_PROBLEMS:
                text += f"; ... {len(self.malformed) - _SHOW_PROBLEMS} more"
        return text


class _Malformed(ValueError):
    """One row cannot be used; the message is the reason."""


# Records: (location, value). Values are whatever the file held at that position;
# a JSONL line that is not JSON is passed on as the exception so it is reported in order.
_Records = Iterator[tuple[str, Any]]


def _jsonl_records(path: Path, name: str) -> _Records:
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():  # blank lines (often a trailing one) are not rows
                location = f"{name}:{number}"
                try:
                    yield location, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield location, _Malformed(f"invalid JSON: {exc.msg} at column {exc.colno}")


def _json_records(path: Path, name: str) -> _Records:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not valid JSON ({exc}); for one object per line use a .jsonl file") from exc
    if isinstance(data, dict):
        wrapped = [key for key in _JSON_WRAPPERS if isinstance(data.get(key), list)]
        if not wrapped:
            raise ValueError(
                f"{name}: a JSON object without a list of records under any of {list(_JSON_WRAPPERS)} "
                f"(keys: {sorted(data)[:10]})"
            )
        data = data[wrapped[0]]
    if not isinstance(data, list):
        raise ValueError(f"{name}: expected a JSON list of records, found {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"{name}[{index}]", record


def _parquet_records(path: Path, name: str) -> _Records:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{name}: not a readable Parquet file ({exc})") from exc
    for row, record in enumerate(table.to_pylist()):
        yield f"{name} row {row}", record


_READERS = {"jsonl": _jsonl_records, "json": _json_records, "parquet": _parquet_records}


def _detect_layout(records: list[tuple[str, Any]], mapping: Mapping[str, Any], name: str) -> FieldMapping:
    """The layout named in `mapping`, else the one the first records' keys fit, with `mapping`'s keys applied."""
    unknown = set(mapping) - _MAPPING_KEYS
    if unknown:
        raise ValueError(f"mapping: unknown key(s) {sorted(unknown)}; allowed: {sorted(_MAPPING_KEYS)}")
    objects = [value for _, value in records[:_DETECT_SAMPLE] if isinstance(value, dict)]
    keys = set().union(*objects) if objects else set()
    layout = mapping.get("layout")
    if layout is None:
        if "problem" in keys and keys & {"solution", "answer"}:
            layout = "math"
        elif {"question", "answer"} <= keys:
            # Same keys as plain; GSM8K is told apart by its '####' answer marker.
            gsm8k = any("####" in str(record.get("answer", "")) for record in objects)
            layout = "gsm8k" if gsm8k else "plain"
        elif {"question", "answer"} <= set(mapping):
            layout = "plain"
        else:
            raise ValueError(
                f"{name}: cannot tell the record layout from keys {sorted(keys)[:20]}; "
                f"pass mapping={{'question': ..., 'answer': ...}} or mapping={{'layout': one of {sorted(LAYOUTS)}}}"
            )
    if layout not in LAYOUTS:
        raise ValueError(f"mapping: unknown layout {layout!r}; known: {sorted(LAYOUTS)}")
    overrides = {key: value for key, value in mapping.items() if key != "layout"}
    if "subject" in overrides:
        subject = overrides["subject"]
        overrides["subject"] = (subject,) if isinstance(subject, str) else tuple(subject or ())
    return replace(LAYOUTS[layout], **overrides)


def _text(record: dict, key: str | None) -> str | None:
    """Stripped text of `record[key]`; numbers are accepted as their decimal text; empty is None."""
    value = record.get(key) if key else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise _Malformed(f"field '{key}' is a {type(value).__name__}, not text")
    return value.strip() or None


def _optional_text(record: dict, key: str | None) -> str | None:
    """`_text` for fields a row can do without: an unusable value counts as absent."""
    try:
        return _text(record, key)
    except _Malformed:
        return None


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEVEL = re.compile(r"(?i)^\s*(?:level\s*)?(\d+)\s*$")


def _level(value: Any) -> int | None:
    """'Level 3', '3', 3 or 3.0 (pandas-written Parquet) -> 3; anything else (MATH has 'Level ?') -> None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and (match := _LEVEL.match(value)):
        value = int(match.group(1))
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:  # int32 column
        return value
    return None


def _answer(record: dict, fields: FieldMapping) -> str:
    if fields.layout == "gsm8k":
        text = _text(record, fields.answer)
        if text is None:
            raise _Malformed(f"missing or empty '{fields.answer}'")
        if "####" not in text:
            raise _Malformed(f"'{fields.answer}' has no '####' final answer")
        final = _THOUSANDS.sub("", text.rsplit("####", 1)[1].strip())
        if not final:
            raise _Malformed(f"nothing after '####' in '{fields.answer}'")
        return final
    answer = _text(record, fields.answer)
    if answer is not None or fields.layout != "math":
        if answer is None:
            raise _Malformed(f"missing or empty '{fields.answer}'")
        return answer
    solution = _text(record, fields.solution)
    if solution is None:
        raise _Malformed(f"no '{fields.answer}' and missing or empty '{fields.solution}'")
    from rstar_math.grading import extract_boxed  # lazily: intake of GSM8K/plain files does not need grading

    boxed = extract_boxed(solution)
    if boxed is None or not boxed.strip():
        raise _Malformed(f"no '{fields.answer}' and no \\boxed{{...}} answer in '{fields.solution}'")
    return boxed.strip()


def _row(record: Any, fields: FieldMapping, source: str | None) -> dict[str, Any]:
    """One PROBLEMS row from one record, or _Malformed saying why not."""
    if isinstance(record, _Malformed):
        raise record
    if not isinstance(record, dict):
        raise _Malformed(f"not an object but a {type(record).__name__}")
    question = _text(record, fields.question)
    if question is None:
        raise _Malformed(f"missing or empty '{fields.question}'")
    answer = _answer(record, fields)
    # Priority: the caller's source, then the record's own, then the layout's name.
    base = source or _optional_text(record, fields.source) or fields.layout
    detail = next((text for key in fields.subject if (text := _optional_text(record, key))), None)
    return {
        "problem_id": problem_id(question),
        "question": question,
        "answer": answer,
        "source": f"{base}/{detail}" if detail else base,
        "level": _level(record.get(fields.level)) if fields.level else None,
    }


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PROBLEMS.schema)


def _read(
    path: Path, name: str, format: str | None, mapping: Mapping[str, Any] | None, source: str | None
) -> tuple[pa.Table, IntakeReport]:
    if format is None:
        format = _FORMATS.get(path.suffix.lower())
        if format is None:
            raise ValueError(
                f"{name}: cannot tell the file format from '{path.suffix}'; pass format= one of {sorted(_READERS)}"
            )
    if format not in _READERS:
        raise ValueError(f"format {format!r} is not one of {sorted(_READERS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file")
    records = list(_READERS[format](path, name))
    if not records:
        raise ValueError(f"{name}: holds no records")
    fields = _detect_layout(records, mapping or {}, name)
    rows: dict[str, dict[str, Any]] = {}  # by problem_id; the first occurrence wins
    malformed: list[tuple[str, str]] = []
    duplicates = 0
    for location, record in records:
        try:
            row = _row(record, fields, source)
        except _Malformed as exc:
            malformed.append((location, str(exc)))
            continue
        if row["problem_id"] in rows:
            duplicates += 1
        else:
            rows[row["problem_id"]] = row
    report = IntakeReport(name, fields.layout, len(records), len(rows), duplicates, tuple(malformed))
    if not rows:
        problems = "; ".join(f"{loc}: {why}" for loc, why in malformed[:_SHOW_PROBLEMS])
        raise ValueError(f"{name}: no usable problems in {len(records)} rows ({fields.layout} layout); {problems}")
    return validate(_table(list(rows.values())), PROBLEMS, source=name), report


def load_problems_with_report(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    mapping: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> tuple[pa.Table, IntakeReport]:
    """Read one problem file into a validated PROBLEMS table, and say what was dropped and why.

    path:    local path or s3:// URI of a .jsonl/.ndjson, .json or .parquet file.
    format:  'jsonl', 'json' or 'parquet' when the extension does not say.
    mapping: overrides of the detected layout: {'layout': 'gsm8k'|'math'|'plain'} and/or
             record keys for 'question', 'answer', 'solution', 'level', 'subject', 'source'.
    source:  the `source` column (default: the layout name; MATH subjects are appended).

    Raises ValueError when the file has no usable row, naming the file and the first problems.
    """
    name = os.fspath(path)
    if name.startswith("s3://"):
        from rstar_math.store import local_copy  # lazily: boto3 only when reading from S3

        with local_copy(name) as local:
            return _read(Path(local), name, format, mapping, source)
    return _read(Path(name), name, format, mapping, source)


def load_problems(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    mapping: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> pa.Table:
    """`load_problems_with_report` that logs the report (a warning when rows were dropped) and returns the table."""
    table, report = load_problems_with_report(path, format=format, mapping=mapping, source=source)
    log.log(logging.WARNING if report.malformed or report.duplicates else logging.INFO, "%s", report.summary())
    return table


def merge_problem_sets(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate PROBLEMS tables, keeping the first row of each problem_id (earlier tables win)."""
    validated = [validate(table, PROBLEMS, source=f"problem set {i}") for i, table in enumerate(tables)]
    if not validated:
        return PROBLEMS.schema.empty_table()
    merged = pa.concat_tables(validated)
    first: dict[str, int] = {}
    for index, pid in enumerate(merged.column("problem_id").to_pylist()):
        first.setdefault(pid, index)
    if len(first) < merged.num_rows:
        log.info("merge_problem_sets: dropped %d duplicate problem(s)", merged.num_rows - len(first))
    return merged.take(sorted(first.values()))
