"""Data contracts: every artefact kind validates on write and on read, with errors naming file and column."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rstar_math.data.schemas import (
    KINDS,
    PROBLEMS,
    TREES,
    SchemaError,
    describe,
    empty_table,
    read_table,
    write_table,
)


def _problems(n=2):
    return pa.table(
        {
            "problem_id": [f"p{i}" for i in range(n)],
            "question": ["q"] * n,
            "answer": ["1"] * n,
            "source": ["s"] * n,
            "level": pa.array([None] * n, pa.int32()),
        }
    )


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_every_kind_round_trips_an_empty_table(kind, tmp_path):
    path = write_table(empty_table(kind), tmp_path / f"{kind.name}.parquet", kind)
    assert read_table(path, kind).schema.equals(kind.schema)
    assert kind.name in describe(kind)


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(_problems().drop(["answer"]), path)
    with pytest.raises(SchemaError, match=r"p\.parquet: missing column 'answer'"):
        read_table(path, PROBLEMS)


def test_mistyped_column_names_file_and_column(tmp_path):
    path = tmp_path / "t.parquet"
    table = empty_table(TREES).set_column(TREES.columns.index("q_value"), "q_value", pa.array([], pa.string()))
    pq.write_table(table, path)
    with pytest.raises(SchemaError, match=r"t\.parquet: column 'q_value' has type string"):
        read_table(path, TREES)


def test_nulls_in_a_required_column_are_rejected(tmp_path):
    path = tmp_path / "p.parquet"
    table = _problems().set_column(2, "answer", pa.array(["1", None]))
    pq.write_table(table, path)
    with pytest.raises(SchemaError, match="'answer' has 1 null"):
        read_table(path, PROBLEMS)


def test_narrower_types_are_widened_and_extra_columns_dropped(tmp_path):
    path = tmp_path / "p.parquet"
    table = _problems().set_column(4, "level", pa.array([1, 2], pa.int8())).append_column("extra", pa.array([0, 0]))
    pq.write_table(table, path)
    out = read_table(path, PROBLEMS)
    assert out.schema.equals(PROBLEMS.schema)
    assert out.column("level").to_pylist() == [1, 2]


def test_a_directory_artefact_reads_all_parts(tmp_path):
    write_table(_problems(2), tmp_path / "part-0.parquet", PROBLEMS)
    write_table(_problems(3), tmp_path / "part-1.parquet", PROBLEMS)
    (tmp_path / "_lineage.json").write_text("{}")
    assert read_table(tmp_path, PROBLEMS).num_rows == 5


def test_not_parquet_and_empty_directory_fail_clearly(tmp_path):
    (tmp_path / "bad.parquet").write_text("hello")
    with pytest.raises(SchemaError, match="bad.parquet: not a readable Parquet file"):
        read_table(tmp_path / "bad.parquet", PROBLEMS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="no .parquet files"):
        read_table(tmp_path / "empty", PROBLEMS)


def test_write_validates_before_touching_the_file(tmp_path):
    with pytest.raises(SchemaError, match="being written"):
        write_table(_problems().drop(["source"]), tmp_path / "p.parquet", PROBLEMS)
    assert list(tmp_path.iterdir()) == []
