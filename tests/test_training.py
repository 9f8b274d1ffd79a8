"""The training loop and its two tasks: label masks, losses, learning, checkpoints and resume, DeepSpeed."""

from __future__ import annotations

import importlib
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from rstar_math.config import TrainConfig
from rstar_math.data.schemas import PPM_PAIRS, SFT_DATA, write_table
from rstar_math.models.ppm import PPMScorer, ProcessPreferenceModel
from rstar_math.steps import render_prompt, render_step
from rstar_math.store import store_for
from rstar_math.training import (
    PPMTask,
    SftTask,
    latest_checkpoint,
    launch_command,
    sft_encode,
    split_by_problem,
    train,
)
from rstar_math.training.loop import (cpu_has_native_bf16, deepspeed_available, deepspeed_config, group_by_length,
                                      use_bf16)
from rstar_math.training.tasks import IGNORE_INDEX

# -- data a tiny model can learn from --------------------------------------------------------------


def _solution(a: int, b: int) -> tuple[str, str]:
    step = render_step(f"<code>\n# Step 1: add the numbers\nx = {a} + {b}\nprint(x)\n<end_of_step>", str(a + b))
    answer = render_step(f"<answer>The answer is \\boxed{{{a + b}}}<end_of_answer>", None)
    return render_prompt(f"What is {a} + {b}?"), step + answer


def sft_rows(n: int = 16, sources: tuple[str, ...] = ("gen",)) -> list[dict]:
    rows = []
    for i in range(n):
        prompt, completion = _solution(i % 7, i // 7 + 2)
        rows.append(dict(problem_id=f"p{i}", prompt=prompt, completion=completion, avg_q=1.0, source=sources[i % len(sources)]))
    return rows


def ppm_rows(n_problems: int, seed: int = 0) -> list[dict]:
    """Sibling steps per problem: the chosen ones run and print a number, the rejected ones raise.

    Every step's text is drawn afresh, so held-out problems share only the pattern.
    """
    rng = random.Random(seed)
    rows = []
    for p in range(n_problems):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        prefix = render_prompt(f"What is {a} + {b}?")
        good = [
            render_step(f"<code>\n# Step 1: add\nx = {a} + {b + k}\nprint(x)\n<end_of_step>", str(a + b + k)) for k in range(2)
        ]
        bad = [
            render_step(f"<code>\n# Step 1: add\nprint({v})\n<end_of_step>", f"NameError: name '{v}' is not defined")
            for v in rng.sample("yzuvw", 2)
        ]
        for c in good:
            for r in bad:
                rows.append(
                    dict(problem_id=f"q{p}", prefix=prefix, chosen=c, rejected=r, q_chosen=0.8, q_rejected=-0.6)
                    | dict(depth=1, kind="step")
                )
    return rows


def config(**changes) -> TrainConfig:
    # fp32 everywhere: `auto` autocasts in bf16 on a CPU with native bf16, and DeepSpeed on CPU never does
    base = dict(learning_rate=3e-3, epochs=2.0, batch_size=4, micro_batch_size=2, warmup_ratio=0.0, checkpoint_every=1000,
                seed=0, precision="fp32")
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def sft_task(tiny_model_dir) -> SftTask:
    return SftTask(str(tiny_model_dir), sft_rows(), max_length=256)


@pytest.fixture(scope="module")
def ppm_task(tiny_model_dir) -> PPMTask:
    return PPMTask(str(tiny_model_dir), ppm_rows(12), max_length=256)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# -- label masks and data handling --------------------------------------------------------------------


def test_sft_labels_mask_prompt_and_output_blocks_token_by_token(tiny_model_dir, sft_task):
    prompt = render_prompt("What is 2 + 3?")
    completion = (
        "<code>\nx = 2\nprint(x)\n<end_of_step>\n<output>5<end_of_output>\n"
        "<answer>\\boxed{5}<end_of_answer>\n"
    )
    encoded = sft_encode(sft_task.tokenizer, prompt, completion, None)
    pieces = [(sft_task.tokenizer.decode([t]), label != IGNORE_INDEX) for t, label in zip(encoded.input_ids, encoded.labels)]
    trained = "".join(text for text, keep in pieces if keep)
    untrained = "".join(text for text, keep in pieces if not keep)
    assert untrained == prompt + "<output>5<end_of_output>\n"
    assert trained == "<code>\nx = 2\nprint(x)\n<end_of_step>\n<answer>\\boxed{5}<end_of_answer>\n"
    # Token by token around the output block: the step's last tokens train, the block's do not.
    start = [text for text, _ in pieces].index("<end_of_step>")
    assert pieces[start : start + 7] == [
        ("<end_of_step>", True),
        ("\n", True),
        ("<output>", False),
        ("5", False),
        ("<end_of_output>", False),
        ("\n", False),
        ("<answer>", True),
    ]
    assert all(label == token for token, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX)
    assert not any(keep for _, keep in pieces[: len(sft_task.tokenizer(prompt)["input_ids"])])


def test_sft_examples_longer_than_max_length_are_cut_at_the_right(sft_task):
    prompt, completion = _solution(2, 3)
    full = sft_encode(sft_task.tokenizer, prompt, completion, None)
    cut = sft_encode(sft_task.tokenizer, prompt, completion, 20)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]


def test_sft_collate_pads_on_the_right_with_ignored_labels(sft_task):
    batch = sft_task.collate([0, 1, 2])
    lengths = [len(sft_task.encoded[i].input_ids) for i in (0, 1, 2)]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_hold_out_splits_whole_problems_deterministically():
    ids = [f"p{i // 3}" for i in range(30)]  # 10 problems, 3 examples each
    train_ids, held = split_by_problem(ids, 0.2, seed=0)
    assert split_by_problem(ids, 0.2, seed=0) == (train_ids, held)
    assert len({ids[i] for i in held}) == 2 and len(held) == 6
    assert not {ids[i] for i in held} & {ids[i] for i in train_ids}
    assert split_by_problem(ids, 0.0, seed=0) == (list(range(30)), [])


def test_source_balancing_gives_each_source_an_equal_share(tiny_model_dir, sft_task):
    rows = sft_rows(12, sources=("big",)) + [dict(r, problem_id=f"s{i}", source="small") for i, r in enumerate(sft_rows(3))]
    task = SftTask(str(tiny_model_dir), rows, max_length=256, balance_sources=True, tokenizer=sft_task.tokenizer)
    order = task.epoch_order(list(range(15)), epoch=0, seed=0)
    assert len(order) == 15
    counts = {s: sum(task.sources[i] == s for i in order) for s in ("big", "small")}
    assert abs(counts["big"] - counts["small"]) <= 1
    assert order == task.epoch_order(list(range(15)), epoch=0, seed=0)
    assert order != task.epoch_order(list(range(15)), epoch=1, seed=0)


def test_ppm_groups_score_each_distinct_step_once(tiny_model_dir, ppm_task):
    group = ppm_task.groups[0]
    assert len(group.sequences) == 4 and len(group.pairs) == 4  # 2 chosen x 2 rejected
    padded = PPMTask(str(tiny_model_dir), ppm_rows(12), max_length=256, share_prefixes=False)
    batch = padded.collate([0, 1])
    assert batch["input_ids"].shape[0] == 8
    assert batch["group"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    chosen, rejected = set(batch["chosen"].tolist()), set(batch["rejected"].tolist())
    assert len(chosen) == len(rejected) == 4 and chosen | rejected == set(range(8))
    texts = padded.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False)
    assert all("Error" not in texts[i] for i in chosen) and all("Error" in texts[i] for i in rejected)
    assert {k: v.tolist() for k, v in ppm_task.collate([0, 1]).items() if k in ("chosen", "rejected", "group")} == {
        k: batch[k].tolist() for k in ("chosen", "rejected", "group")
    }


def test_packed_ppm_batches_give_the_padded_loss_and_gradients_for_fewer_tokens(tiny_model_dir, ppm_task):
    padded = PPMTask(str(tiny_model_dir), ppm_rows(12), max_length=256, share_prefixes=False)
    indices = list(range(6))
    assert ppm_task.num_tokens(indices) < 0.75 * padded.num_tokens(indices)  # the prompt counts once per group
    torch.manual_seed(0)
    model = ppm_task.build_model()
    gradients = []
    for task in (ppm_task, padded):
        model.zero_grad()
        loss = task.loss(model, task.collate(indices))
        loss.backward()
        gradients.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (packed_loss, packed_grads), (padded_loss, padded_grads) = gradients
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# -- learning -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", ["sft", "ppm"])
def test_one_training_step_changes_every_parameter(task_name, sft_task, ppm_task, tmp_path):
    task = sft_task if task_name == "sft" else ppm_task
    torch.manual_seed(0)  # the loop seeds the same way before it builds the model
    before = {k: v.clone() for k, v in task.build_model().named_parameters()}
    result = train(task, config(epochs=4 / len(task), batch_size=4), output_dir=tmp_path / "out")
    assert result.steps == 1
    if task_name == "sft":
        from transformers import AutoModelForCausalLM

        after = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "out").named_parameters())
    else:
        after = dict(ProcessPreferenceModel.from_pretrained(tmp_path / "out").named_parameters())
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters not updated by a training step: {unchanged}"


def test_sft_loss_decreases(sft_task, tmp_path):
    losses = []
    result = train(sft_task, config(epochs=2), output_dir=tmp_path / "out", on_step=lambda info: losses.append(info.loss))
    assert result.steps == len(losses) == 8
    assert losses[-1] < losses[0] - 0.5
    assert result.tokens_per_s > 0 and result.final_loss == losses[-1]


def test_sft_loss_decreases_under_bf16_autocast_on_cpu(sft_task, tmp_path):
    losses = []
    train(sft_task, config(epochs=2, precision="bf16"), output_dir=tmp_path / "out",
          on_step=lambda info: losses.append(info.loss))
    assert losses[-1] < losses[0] - 0.5


def test_grouping_by_length_keeps_the_examples_and_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(500)]
    order = list(range(500))
    rng.shuffle(order)
    grouped = group_by_length(order, lengths.__getitem__, 32, "0:0:length")
    assert sorted(grouped) == list(range(500))
    assert grouped == group_by_length(order, lengths.__getitem__, 32, "0:0:length")  # resumable: a pure function

    def padded(o):
        return sum(32 * max(lengths[i] for i in o[k : k + 32]) for k in range(0, len(o), 32))

    assert padded(grouped) < 0.8 * padded(order)  # lengths uniform over 20-400: 0.70


def test_native_bf16_is_read_from_the_cpu_flags():
    avx2_only = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert not cpu_has_native_bf16(avx2_only)
    assert cpu_has_native_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("model name\t: avx512_bf16 in a name is not a flag\n")


def test_precision_choices():
    cpu = torch.device("cpu")
    assert use_bf16("bf16", cpu) and not use_bf16("fp32", cpu)
    assert use_bf16("auto", cpu) == cpu_has_native_bf16()  # emulated bf16 is far slower than fp32
    with pytest.raises(ValueError, match="precision"):
        use_bf16("fp8", cpu)


def test_ppm_ranks_held_out_pairs_above_chance(tiny_model_dir, tmp_path):
    task = PPMTask(str(tiny_model_dir), ppm_rows(40), max_length=256)
    cfg = config(learning_rate=2e-3, epochs=3, batch_size=4, micro_batch_size=4, warmup_ratio=0.1, holdout_fraction=0.25)
    result = train(task, cfg, output_dir=tmp_path / "ppm")
    assert result.heldout_examples == 10 and result.examples == 30
    assert [m.epoch for m in result.heldout] == pytest.approx([32 / 30, 60 / 30, 92 / 30])  # 23 steps of 4
    final = result.heldout[-1].metrics
    assert final["pairs"] == 40
    assert final["pairwise_accuracy"] > 0.75, result.heldout
    assert final["loss"] < result.heldout[0].metrics["loss"] or result.heldout[0].metrics["pairwise_accuracy"] == 1.0
    scorer = PPMScorer.from_pretrained(tmp_path / "ppm")
    row = ppm_rows(1, seed=99)[0]
    good, bad = scorer.score([row["prefix"] + row["chosen"], row["prefix"] + row["rejected"]])
    assert good > bad


# -- checkpoints and resume ------------------------------------------------------------------------------


class Interrupted(RuntimeError):
    """Stands for a killed pod: raised from the step callback."""


def _interrupt_at(step: int):
    def hook(info):
        if info.step == step:
            raise Interrupted(f"interrupted after step {info.step}")

    return hook


def test_interrupted_run_resumes_to_the_same_weights(sft_task, tmp_path):
    cfg = config(epochs=2, checkpoint_every=2, holdout_fraction=0.25)
    whole = train(sft_task, cfg, output_dir=tmp_path / "whole", checkpoint_uri=str(tmp_path / "ckpt-whole"))

    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Interrupted):
        train(sft_task, cfg, output_dir=tmp_path / "resumed", checkpoint_uri=ckpt, on_step=_interrupt_at(5))
    assert latest_checkpoint(ckpt).endswith("step-000004")
    resumed = train(sft_task, cfg, output_dir=tmp_path / "resumed", checkpoint_uri=ckpt)

    assert resumed.resumed_from == 4
    assert resumed.steps == whole.steps == 6 and resumed.complete
    assert resumed.final_loss == pytest.approx(whole.final_loss, abs=1e-6)
    assert len(resumed.heldout) == len(whole.heldout) == 2
    for got, want in zip(resumed.heldout, whole.heldout):
        assert got.step == want.step and got.metrics == pytest.approx(want.metrics)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)
    # Only the newest two checkpoints are kept, each complete.
    assert sorted(p.name for p in Path(ckpt).iterdir()) == ["step-000004", "step-000006"]
    state = json.loads((Path(ckpt) / "step-000006" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["examples_seen"] == 24 and state["backend"] == "torch"


def test_half_written_checkpoint_is_ignored(sft_task, tmp_path):
    cfg = config(epochs=2, checkpoint_every=2)
    ckpt = tmp_path / "ckpt"
    train(sft_task, cfg, output_dir=tmp_path / "out", checkpoint_uri=str(ckpt), max_steps=3)
    # A writer that died mid-upload: files, but no trainer_state.json.
    torn = ckpt / "step-000005"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"torn")
    assert latest_checkpoint(str(ckpt)).endswith("step-000003")
    result = train(sft_task, cfg, output_dir=tmp_path / "out", checkpoint_uri=str(ckpt))
    assert result.resumed_from == 3 and result.steps == 8


def test_checkpoint_of_another_run_is_refused(sft_task, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    train(sft_task, config(checkpoint_every=2), output_dir=tmp_path / "out", checkpoint_uri=ckpt, max_steps=2)
    with pytest.raises(ValueError, match="batch_size"):
        train(sft_task, config(batch_size=8, micro_batch_size=2), output_dir=tmp_path / "out", checkpoint_uri=ckpt)


def test_ppm_checkpoints_and_final_model_on_s3(ppm_task, s3_root, tmp_path):
    cfg = config(epochs=2, checkpoint_every=2)
    ckpt, out = f"{s3_root}/checkpoints/ppm", f"{s3_root}/round-1/ppm"
    first = train(ppm_task, cfg, output_dir=out, checkpoint_uri=ckpt, max_steps=3)
    assert not first.complete and first.steps == 3
    assert not store_for(out).is_dir(out)  # stopped early: no final model
    assert latest_checkpoint(ckpt) == f"{ckpt}/step-000003"
    result = train(ppm_task, cfg, output_dir=out, checkpoint_uri=ckpt)
    assert result.resumed_from == 3 and result.steps == 6 and result.complete
    assert sorted({f.split("/")[0] for f in store_for(ckpt).list_files(ckpt)}) == ["step-000004", "step-000006"]
    scores = PPMScorer.from_pretrained(out).score([ppm_task.tokenizer.decode(ppm_task.groups[0].sequences[0])])
    assert -1 <= scores[0] <= 1


def test_command_line_entry_point_trains_from_artefacts(tiny_model_dir, tmp_path):
    from rstar_math.training.run import main

    data = write_table(pa.Table.from_pylist(ppm_rows(4), schema=PPM_PAIRS.schema), tmp_path / "pairs.parquet", PPM_PAIRS)
    argv = [
        "--task", "ppm", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(tmp_path / "ppm"),
        "--config", "smoke", "--set", "train.ppm.learning_rate=0.001", "--device", "cpu", "--max-length", "128",
        "--result-json", str(tmp_path / "result.json"),
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["task"] == "ppm" and result["complete"]
    assert result["examples"] + result["heldout_examples"] == 4  # smoke holds out 5% of problems (at least one)
    assert ProcessPreferenceModel.from_pretrained(tmp_path / "ppm") is not None


def test_launch_command_runs_the_module_under_torchrun():
    argv = launch_command(["--task", "sft"], nproc_per_node=8)
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "-m"]
    assert argv[6:] == ["rstar_math.training.run", "--task", "sft"]


# -- DeepSpeed ---------------------------------------------------------------------------------------------


def test_deepspeed_config_is_filled_from_the_training_config():
    cfg = config(batch_size=128, micro_batch_size=4, deepspeed="zero3")
    ds = deepspeed_config(cfg, world_size=8, accumulation=4, bf16=True)
    assert ds["train_batch_size"] == 128 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 1.0
    assert ds["bf16"] == {"enabled": True} and ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "auto" not in json.dumps(ds)
    assert deepspeed_config(config(deepspeed="zero2"), world_size=1, accumulation=2, bf16=False)["bf16"] == {"enabled": False}


def test_deepspeed_json_path_with_auto_values_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}))
    with pytest.raises(ValueError, match="zero_optimization.reduce_bucket_size"):
        deepspeed_config(config(deepspeed=str(path)), world_size=1, accumulation=1, bf16=False)


@pytest.fixture
def single_process_deepspeed(monkeypatch):
    """One gloo process, as torchrun would describe it."""
    if not deepspeed_available():
        pytest.skip("deepspeed does not import (install it with: DS_BUILD_OPS=0 pip install deepspeed==0.19.8)")
    from rstar_math.store.s3server import free_port

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    # DeepSpeed JIT-compiles a shared-memory all-reduce kernel for CPU (about 45 s on 2 cores);
    # a single process never all-reduces through it.
    monkeypatch.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_sft_matches_plain_pytorch_and_saves_a_loadable_model(stage, sft_task, tmp_path, single_process_deepspeed):
    from transformers import AutoModelForCausalLM

    losses = []
    cfg = config(epochs=1, checkpoint_every=2)
    result = train(
        sft_task, TrainConfig(**{**cfg.__dict__, "deepspeed": stage}), output_dir=tmp_path / "ds",
        checkpoint_uri=str(tmp_path / "ckpt"), on_step=lambda info: losses.append(info.loss),
    )
    assert result.steps == 4 and losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ds")
    assert model.config.architectures == ["Qwen2ForCausalLM"]
    state = json.loads((tmp_path / "ckpt" / "step-000004" / "trainer_state.json").read_text())
    assert state["backend"] == "deepspeed" and (tmp_path / "ckpt" / "step-000004" / "deepspeed" / "state").is_dir()

    plain = train(sft_task, cfg, output_dir=tmp_path / "plain")
    assert result.final_loss == pytest.approx(plain.final_loss, abs=1e-4)
    expected = _weights(tmp_path / "plain")
    for name, tensor in _weights(tmp_path / "ds").items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_deepspeed_zero3_ppm_resumes_and_gathers_the_value_head(ppm_task, tmp_path, single_process_deepspeed):
    cfg = config(epochs=1, checkpoint_every=1, deepspeed="zero3")
    ckpt = str(tmp_path / "ckpt")
    first = train(ppm_task, cfg, output_dir=tmp_path / "ppm", checkpoint_uri=ckpt, max_steps=2)
    assert first.steps == 2 and not first.complete
    result = train(ppm_task, cfg, output_dir=tmp_path / "ppm", checkpoint_uri=ckpt)
    assert result.resumed_from == 2 and result.steps == 3
    whole = train(ppm_task, cfg, output_dir=tmp_path / "whole")
    assert result.final_loss == pytest.approx(whole.final_loss, abs=1e-6)
    a = PPMScorer.from_pretrained(tmp_path / "ppm").raw_scores(["<question>\nWhat is 1 + 1?\n<end_of_question>\n"])
    b = PPMScorer.from_pretrained(tmp_path / "whole").raw_scores(["<question>\nWhat is 1 + 1?\n<end_of_question>\n"])
    assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", ["", "zero3"], ids=["ddp", "zero3"])
def test_two_processes_under_torchrun_match_one(deepspeed, tiny_model_dir, sft_task, tmp_path):
    """The global batch does not depend on the world size, so two gloo processes end where one does."""
    import subprocess

    if deepspeed and not deepspeed_available():
        pytest.skip("deepspeed does not import")
    data = write_table(pa.Table.from_pylist(sft_rows(), schema=SFT_DATA.schema), tmp_path / "sft.parquet", SFT_DATA)
    settings = dict(learning_rate=0.003, epochs=2, batch_size=4, micro_batch_size=2, warmup_ratio=0.0, deepspeed=deepspeed,
                    precision="fp32")  # the smoke preset's `auto` may mean bf16 autocast; compare at full precision
    argv = launch_command(
        ["--task", "sft", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(tmp_path / "two"),
         "--config", "smoke", "--device", "cpu", "--max-length", "256"]
        + [arg for key, value in settings.items() for arg in ("--set", f"train.policy.{key}={value}")],
        nproc_per_node=2,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    subprocess.run(argv, check=True, env=env, timeout=600)
    one = train(sft_task, config(**{**settings, "deepspeed": ""}), output_dir=tmp_path / "one")
    assert one.complete
    expected = _weights(tmp_path / "one")
    for name, tensor in _weights(tmp_path / "two").items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-4, rtol=0)
