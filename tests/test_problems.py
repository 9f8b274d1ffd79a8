"""Tests for rstar_math.data.problems: ids, layouts, file formats, dedup and malformed-row reports."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rstar_math.data.problems import (
    IntakeReport,
    load_problems,
    load_problems_with_report,
    merge_problem_sets,
    normalize_question,
    problem_id,
)
from rstar_math.data.schemas import PROBLEMS, validate

GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A farm sells 1,250 eggs a day. How many in 2 days?", "answer": "1,250 * 2 = 2,500\n#### 2,500"},
]

MATH = [
    {
        "problem": "Compute $\\frac{1}{2} + \\frac{1}{3}$.",
        "solution": "We get $\\boxed{\\frac{5}{6}}$.",
        "level": "Level 2",
        "type": "Prealgebra",
    },
    {
        "problem": "Simplify $x^{2} \\cdot x^{3}$.",
        # The LAST box counts, and nested braces stay whole.
        "solution": "First $\\boxed{x}$ is wrong; in fact it is $\\boxed{x^{5}}$.",
        "level": "Level ?",
        "type": "Algebra",
    },
]

MATH500 = [
    {
        "problem": "What is $2^{10}$?",
        "solution": "... so $\\boxed{1024}$.",
        "answer": "1024",
        "subject": "Algebra",
        "level": 1,
    },
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# --- problem_id -------------------------------------------------------------------------------


def test_problem_id_is_a_stable_hash_of_the_normalised_question():
    pid = problem_id("What is 1 + 1?")
    assert pid.startswith("p") and len(pid) == 17
    assert pid == problem_id("  What   is 1\t+\n1? ")  # whitespace runs and ends do not matter
    assert pid == problem_id("What\u00a0is 1 + 1?")  # NFKC: no-break space is a space
    assert pid != problem_id("what is 1 + 1?")  # case matters
    assert normalize_question(" \uff21  b\n") == "A b"  # fullwidth A -> A


def test_problem_id_contract_value():
    # Pinned: ids are stored in artefacts and joined across runs; changing this breaks them.
    assert problem_id("What is 1 + 1?") == "p72f8917549de2d6d"
    assert problem_id("What is 1 + 1?") == "p" + hashlib.sha256(b"What is 1 + 1?").hexdigest()[:16]


# --- layouts and formats ----------------------------------------------------------------------


def test_gsm8k_final_answer_after_hashes_without_thousands_separators(tmp_path):
    table, report = load_problems_with_report(write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K))
    validate(table, PROBLEMS)
    assert report.layout == "gsm8k"
    assert table.column("answer").to_pylist() == ["7", "2500"]
    assert table.column("source").to_pylist() == ["gsm8k", "gsm8k"]
    assert table.column("level").to_pylist() == [None, None]
    assert table.column("question").to_pylist()[1] == GSM8K[1]["question"]


def test_math_boxed_answer_with_nested_braces_level_and_subject(tmp_path):
    table, report = load_problems_with_report(write_jsonl(tmp_path / "math.jsonl", MATH))
    assert report.layout == "math"
    assert table.column("answer").to_pylist() == ["\\frac{5}{6}", "x^{5}"]
    assert table.column("level").to_pylist() == [2, None]  # 'Level ?' is no level
    assert table.column("source").to_pylist() == ["math/Prealgebra", "math/Algebra"]


def test_math500_answer_field_wins_and_source_can_be_named(tmp_path):
    path = tmp_path / "math500.json"
    path.write_text(json.dumps(MATH500))
    table = load_problems(path, source="math500")
    assert table.to_pylist() == [
        {
            "problem_id": problem_id("What is $2^{10}$?"),
            "question": "What is $2^{10}$?",
            "answer": "1024",
            "source": "math500/Algebra",
            "level": 1,
        }
    ]


def test_plain_json_wrapped_in_data(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"version": 1, "data": [{"question": "2+2?", "answer": 4, "level": "3"}]}))
    table, report = load_problems_with_report(path)
    assert report.layout == "plain"
    assert table.to_pylist()[0] | {"problem_id": None} == {
        "problem_id": None,
        "question": "2+2?",
        "answer": "4",
        "source": "plain",
        "level": 3,
    }


def test_parquet_and_a_problems_table_loads_back_unchanged(tmp_path):
    original = pa.Table.from_pylist(
        [
            {
                "problem_id": problem_id("Solve x + 1 = 3."),
                "question": "Solve x + 1 = 3.",
                "answer": "2",
                "source": "mathematics_dataset/algebra__linear_1d",
                "level": 2,
            },
        ],
        schema=PROBLEMS.schema,
    )
    pq.write_table(original, tmp_path / "problems.parquet")
    assert load_problems(tmp_path / "problems.parquet").equals(original)


def test_format_and_mapping_overrides(tmp_path):
    path = write_jsonl(tmp_path / "custom.txt", [{"prompt": "Is 7 prime?", "target": "yes", "difficulty": "Level 4"}])
    with pytest.raises(ValueError, match="cannot tell the file format"):
        load_problems(path)
    table = load_problems(
        path, format="jsonl", mapping={"question": "prompt", "answer": "target", "level": "difficulty"}, source="mine"
    )
    assert table.to_pylist()[0]["answer"] == "yes"
    assert table.to_pylist()[0]["level"] == 4
    assert table.to_pylist()[0]["source"] == "mine"


def test_layout_can_be_forced(tmp_path):
    # No '####' anywhere, so auto-detection says plain; forcing gsm8k makes such rows malformed.
    rows = [{"question": "Q1?", "answer": "#### 5"}, {"question": "Q2?", "answer": "6"}]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    table, report = load_problems_with_report(path, mapping={"layout": "gsm8k"})
    assert table.column("answer").to_pylist() == ["5"]
    assert report.malformed == ((f"{path}:2", "'answer' has no '####' final answer"),)


def test_undetectable_layout_asks_for_a_mapping(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the record layout.*mapping"):
        load_problems(write_jsonl(tmp_path / "x.jsonl", [{"text": "hello", "label": 1}]))


def test_unknown_mapping_key(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        load_problems(write_jsonl(tmp_path / "x.jsonl", GSM8K), mapping={"questoin": "q"})


# --- dedup ------------------------------------------------------------------------------------


def test_duplicates_by_normalised_question_first_wins(tmp_path):
    rows = [
        {"question": "What is 2 + 3?", "answer": "5"},
        {"question": "What  is 2 +\n3? ", "answer": "five"},  # same problem, other whitespace
        {"question": "what is 2 + 3?", "answer": "5"},  # other case: another problem
    ]
    table, report = load_problems_with_report(write_jsonl(tmp_path / "d.jsonl", rows))
    assert table.column("answer").to_pylist() == ["5", "5"]
    assert table.column("question").to_pylist() == ["What is 2 + 3?", "what is 2 + 3?"]
    assert (report.rows_read, report.rows_kept, report.duplicates) == (3, 2, 1)


def test_merge_problem_sets_deduplicates_across_sets(tmp_path):
    a_rows = [{"question": "Q1?", "answer": "1"}, {"question": "Q2?", "answer": "2"}]
    b_rows = [{"question": "Q2? ", "answer": "x"}, {"question": "Q3?", "answer": "3"}]
    a = load_problems(write_jsonl(tmp_path / "a.jsonl", a_rows))
    b = load_problems(write_jsonl(tmp_path / "b.jsonl", b_rows))
    merged = merge_problem_sets([a, b])
    assert merged.column("question").to_pylist() == ["Q1?", "Q2?", "Q3?"]
    assert merged.column("answer").to_pylist() == ["1", "2", "3"]
    assert merge_problem_sets([]).num_rows == 0


# --- malformed rows ---------------------------------------------------------------------------


def test_malformed_jsonl_rows_are_reported_with_line_numbers(tmp_path, caplog):
    lines = [
        GSM8K[0],  # line 1: fine
        "{not json",  # 2
        "",  # 3: blank, not a row
        [1, 2],  # 4: not an object
        {"question": "", "answer": "#### 3"},  # 5: empty question
        {"question": "No answer?"},  # 6: missing answer
        {"question": "No marker?", "answer": "just 4"},  # 7: GSM8K answer without '####'
        GSM8K[1],  # 8: fine
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="rstar_math.data.problems"):
        table = load_problems(path)
    assert table.num_rows == 2
    table, report = load_problems_with_report(path)
    assert isinstance(report, IntakeReport)
    assert [location for location, _ in report.malformed] == [f"{path}:{n}" for n in (2, 4, 5, 6, 7)]
    reasons = [reason for _, reason in report.malformed]
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1] == "not an object but a list"
    assert reasons[2] == "missing or empty 'question'"
    assert reasons[3] == "missing or empty 'answer'"
    assert reasons[4] == "'answer' has no '####' final answer"
    assert (report.rows_read, report.rows_kept, report.duplicates) == (7, 2, 0)
    assert "5 malformed" in caplog.text and str(path) in caplog.text


def test_malformed_json_and_parquet_rows_are_reported_by_index_and_row(tmp_path):
    path = tmp_path / "math.json"
    path.write_text(json.dumps([MATH[0], {"problem": "P?", "solution": "no box here"}, "text"]))
    _, report = load_problems_with_report(path)
    assert report.malformed == (
        (f"{path}[1]", "no 'answer' and no \\boxed{...} answer in 'solution'"),
        (f"{path}[2]", "not an object but a str"),
    )
    parquet = tmp_path / "plain.parquet"
    columns = {"question": ["Q1?", None, "Q3?"], "answer": ["1", "2", None], "level": [2.0, None, float("nan")]}
    pq.write_table(pa.table(columns), parquet)
    table, report = load_problems_with_report(parquet)
    assert table.column("question").to_pylist() == ["Q1?"]
    assert table.column("level").to_pylist() == [2]  # float levels, as pandas writes them with gaps
    assert [location for location, _ in report.malformed] == [f"{parquet} row 1", f"{parquet} row 2"]


def test_a_file_with_no_usable_rows_fails_naming_the_file(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"question": "Q?", "answer": ""}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: no usable problems in 2 rows.*bad\.jsonl:1: invalid JSON"):
        load_problems(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: holds no records"):
        load_problems(empty)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_problems(broken)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems(tmp_path / "nope.jsonl")
