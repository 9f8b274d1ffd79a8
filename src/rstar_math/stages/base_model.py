"""Base-model stage: the policy every round fine-tunes from, and the seed corpus behind it.

    prepare_base_model(model_out, corpus_out, config=cfg, context=ctx, problems=[train_uri, held_out_uri])

With model.base = `embedded` the base model is bootstrapped from scratch (tokenizer
and a small Qwen2 trained on a seed corpus with systematic misconceptions, see
embedded/bootstrap.py), never on a question of the run's train or held-out sets.
Otherwise model.base names a Hugging Face checkpoint directory (local or s3://),
which is copied into the run as its first artefact: its hash is pinned, and
lineage starts there. The seed corpus (SFT_DATA rows) feeds the continued-training
control; for an external base model it is empty.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from typing import Sequence

import pyarrow as pa

from rstar_math.artifacts import ArtifactRef, write_artifact
from rstar_math.config import RunConfig
from rstar_math.data.schemas import PROBLEMS, SFT_DATA, write_table
from rstar_math.lineage import RunContext
from rstar_math.stages.io import read_artifact_table
from rstar_math.steps import split_prompt
from rstar_math.store import local_copy

CORPUS_FILE = "seed_corpus.parquet"
RESULT_FILE = "bootstrap_result.json"


def corpus_rows(documents: Sequence[str], problem_ids: Sequence[str], modules: Sequence[str]) -> pa.Table:
    """Seed documents as SFT_DATA rows: the prompt is everything up to the end of the question."""
    rows = []
    for document, problem_id, module in zip(documents, problem_ids, modules):
        prompt, completion = split_prompt(document)
        rows.append({"problem_id": problem_id, "prompt": prompt, "completion": completion, "avg_q": 0.0,
                     "source": f"mathematics_dataset/{module}"})
    return pa.Table.from_pylist(rows, schema=SFT_DATA.schema)


def prepare_base_model(
    model_out: str | ArtifactRef,
    corpus_out: str | ArtifactRef,
    *,
    config: RunConfig,
    context: RunContext,
    problems: Sequence[str | ArtifactRef] = (),
) -> dict:
    if config.model.base != "embedded":
        with write_artifact(model_out, kind="policy", stage="import_base_model", context=context,
                            inputs={"base_model": config.model.base}) as out_dir, local_copy(config.model.base) as source:
            shutil.copytree(source, out_dir, dirs_exist_ok=True)
        with write_artifact(corpus_out, kind="sft_data", stage="import_base_model", context=context) as out_dir:
            write_table(SFT_DATA.schema.empty_table(), out_dir / CORPUS_FILE, SFT_DATA)
        return {"base_model": config.model.base}

    from rstar_math.embedded.bootstrap import bootstrap

    exclude = {pid for p in problems for pid in read_artifact_table(p, PROBLEMS).column("problem_id").to_pylist()}
    inputs = {f"excluded-{i}": p for i, p in enumerate(problems)}
    params = asdict(config.embedded)
    with write_artifact(model_out, kind="policy", stage="bootstrap", context=context, inputs=inputs,
                        params=params) as model_dir:
        result = bootstrap(config.embedded, model_dir, exclude=exclude, max_step_tokens=config.search.max_step_tokens)
        summary = {k: v for k, v in asdict(result).items() if k not in ("path", "corpus")}
        (model_dir / RESULT_FILE).write_text(json.dumps(summary, indent=2))
    with write_artifact(corpus_out, kind="sft_data", stage="bootstrap", context=context, inputs=inputs,
                        params=params) as out_dir:
        corpus = result.corpus
        write_table(corpus_rows(corpus.documents, corpus.problem_ids, corpus.modules), out_dir / CORPUS_FILE, SFT_DATA)
    return summary
