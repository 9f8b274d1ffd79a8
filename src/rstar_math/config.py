"""One configuration object for a run: a tree of frozen dataclasses, loadable from YAML.

    cfg = load_config("paper")                       # a named preset (presets/paper.yaml)
    cfg = load_config("my-run.yaml", overrides=["search.candidates=4", "rounds=2"])
    cfg.search.rollouts_for(round=3)                  # -> 16

A YAML file may start from a preset with `extends: <preset or path>` and override
only what differs. Unknown keys and wrongly typed values are errors that name the
file and the key. The pipeline's parameters map onto these fields, and
`config_hash` pins a run's settings in every lineage record.

Presets:
  paper    the settings of METHOD.md (Qwen2.5-Math-7B scale, GPU cluster)
  default  the embedded default: a small model and generated problems, minutes on a CPU
  smoke    the same pipeline in seconds, for tests
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

PRESETS_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the source and the key."""


PRECISIONS = ("auto", "bf16", "fp32")
"""TrainConfig.precision's choices."""
PRETRAINING_DTYPES = ("auto", "bfloat16", "float32")
"""EmbeddedConfig.dtype's choices."""


def _one_of(*choices: str, default: str):
    """A string field that a config file may only set to one of `choices` (checked by `_build`)."""
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class ModelConfig:
    base: str = "embedded"
    """Base policy checkpoint: a Hugging Face model directory (local or s3://), or `embedded`
    for the small model the bootstrap step trains from scratch."""
    dtype: str = _one_of("auto", "float32", "bfloat16", "float16", default="auto")
    """auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16."""
    max_seq_len: int = 4096
    """Longest prompt + trajectory, in tokens."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Problems made with the mathematics-dataset generator (the embedded default's problem set)."""

    modules: tuple[str, ...] = ()
    train_per_module: int = 0
    eval_per_module: int = 0
    difficulty: float = 0.0
    """Fraction of the generator's entropy range, 0 (easiest) to 1."""
    max_composed_modules: int = 0
    """Most sub-questions a composed module's question chains (0 = upstream's 2 to 4)."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check_composed_cap("data.generator.max_composed_modules", self.max_composed_modules)


@dataclass(frozen=True)
class EmbeddedConfig:
    """The embedded default's world: the seed corpus and the small model bootstrapped on it.

    Used when model.base is `embedded` (embedded/bootstrap.py; README, "The embedded default")."""

    modules: tuple[str, ...] = (
        "numbers__gcd",
        "numbers__div_remainder",
        "numbers__is_factor",
        "arithmetic__mixed",
        "algebra__linear_1d",
        "algebra__linear_1d_composed",
        "polynomials__evaluate",
        "numbers__is_factor_composed",
    )
    misconception_rates: tuple[float, ...] = (0.85, 0.7, 0.7, 0.7, 0.8, 0.6, 0.8, 0.7)
    """Share of seed solutions per module (same order as `modules`) that make the module's
    systematic mistake: the stand-in for imperfect pre-training data."""
    corpus_per_module: int = 2000
    corpus_difficulty: tuple[float, ...] = (0.0, 0.4)
    """Band of the generator's difficulty range the corpus is drawn from (low, high)."""
    max_composed_modules: int = 2
    """Most sub-questions a composed question of the corpus chains: with one intermediate
    value, composed problems are within reach of a model this small (data.generator has
    the same knob for the searched and held-out problems)."""
    corpus_seed: int = 7
    vocab_size: int = 400
    """Few merges on purpose: numbers and names then tokenize alike in questions and code,
    which a model this small needs to learn copying them."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    """The MLP's width (twice the hidden size; 0.64M parameters in all). At 512 (1.04M) the
    pre-training took 1.4x as long in fp32 and the rounds about 1.2x, and the model learnt the
    world no better (README, "The embedded default")."""
    max_seq_len: int = 512
    batch_tokens: int = 1536
    """Padded tokens per optimiser step of the pre-training."""
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    max_steps: int = 5000
    """Copying names and values from the question into a later step is the last skill the model
    learns, and when it clicks varies with the processor's arithmetic: with the MLP at 512, at 4000
    steps one machine's base model had learnt it and another's had not; at 5000 that one had too.
    At 2500 it had not, and four rounds of search could not teach it. The 0.64M model's loss made
    its big drop (0.49 to 0.20-0.24) between steps 1000 and 1500 in both draws measured, the wider
    model's between 1500 and 2500, yet at 3000 steps the 0.64M model had not learnt the copying
    either (docs/embedded-runs.md, "Shorter pre-training")."""
    time_budget_s: float = 2400.0
    """Stop pre-training early (with a warning) if it takes longer than this. A guard against a
    far slower machine, not a schedule: the bootstrap took 17 minutes in fp32 on an AVX2-only CPU
    and 9 with native bf16, and a model cut short makes a weaker world."""
    dtype: str = _one_of(*PRETRAINING_DTYPES, default="auto")
    """float32, bfloat16 (autocast) or auto: bfloat16 on a CPU with native bf16, where it is the
    faster, float32 elsewhere (emulated bf16 pre-trained 5.4x slower than float32)."""
    workers: int = 2
    """Pre-training processes, one thread each, gradients summed over them."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check_composed_cap("embedded.max_composed_modules", self.max_composed_modules)

    @property
    def rates(self) -> dict[str, float]:
        """Misconception rate per module."""
        if len(self.misconception_rates) != len(self.modules):
            raise ConfigError(f"embedded.misconception_rates has {len(self.misconception_rates)} entries for "
                              f"{len(self.modules)} modules")
        return dict(zip(self.modules, self.misconception_rates))


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()
    """Problem files or artefacts (JSONL, JSON, Parquet; local or s3://) searched for training data."""
    eval: tuple[str, ...] = ()
    """Held-out benchmarks evaluated every round."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """Used when `train` is empty."""
    shards: int = 1
    """Rollout and verify fan out over this many shards of the training problems."""
    max_train_problems: int = 0
    """Cap on training problems per round (0 = all)."""


@dataclass(frozen=True)
class SearchConfig:
    rollouts: tuple[int, ...] = (8, 16, 16, 16)
    """MCTS rollouts per problem, one entry per round (the last repeats)."""
    hard_rollouts: tuple[int, ...] = (0, 0, 0, 64)
    """Rollouts for problems still unsolved by the previous round, per round (0 = same as `rollouts`)."""
    candidates: tuple[int, ...] = (8,)
    """k: candidate next steps sampled per expansion, one entry per round (the last repeats; a
    single number is every round's). Evaluation's MCTS uses the last entry in every round, so
    its column measures the policies with one method."""
    max_depth: int = 16
    max_consecutive_errors: int = 2
    """A node after this many consecutive failing steps is terminal with reward -1."""
    c_uct: float = 2.0
    ppm_from_round: int = 3
    """First round whose search initialises new nodes' Q with the PPM (terminal-guided before)."""
    temperature: float = 0.7
    top_p: float = 1.0
    max_step_tokens: int = 2048
    """Most new tokens per generated step."""
    time_limit_s: float = 0.0
    """Wall-clock limit per problem (0 = none); a problem that runs out is recorded unsolved."""
    trees_in_flight: int = 256
    """Trees advancing together, so every engine call sees a full batch."""

    def rollouts_for(self, round: int) -> int:
        return _per_round(self.rollouts, round)

    def hard_rollouts_for(self, round: int) -> int:
        return _per_round(self.hard_rollouts, round) or self.rollouts_for(round)

    def candidates_for(self, round: int) -> int:
        return _per_round(self.candidates, round)


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 10.0
    memory_mb: int = 2048
    max_output_chars: int = 2048
    workers: int = 0
    """Warm executor processes (0 = one per CPU core)."""


@dataclass(frozen=True)
class SelectConfig:
    sft_per_problem: int = 2
    """Top trajectories (by average step Q) kept per solved problem."""
    sft_max_q_gap: float | None = None
    """Keep a trajectory only if its average Q is at most this far below its problem's best
    (None: plain top-k, as the method). Keeps a lucky second trajectory out of the data."""
    ppm_positives: int = 2
    ppm_negatives: int = 2
    balance_sources: bool = False
    """Cap each problem source at the size of the smallest, so rare sources are not forgotten."""

    def __post_init__(self) -> None:
        if self.sft_max_q_gap is not None and not 0 <= self.sft_max_q_gap <= 2:
            raise ConfigError(f"select.sft_max_q_gap: expected a number from 0 to 2 (Q lies in [-1, 1]), "
                              f"got {self.sft_max_q_gap}")


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 7e-6
    epochs: float = 2.0
    batch_size: int = 128
    """Sequences per optimiser step, across all devices (gradient accumulation fills the gap)."""
    micro_batch_size: int = 4
    """Sequences per device per forward pass."""
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    checkpoint_every: int = 200
    """Optimiser steps between resumable checkpoints written to the store."""
    deepspeed: str = ""
    """'' for plain PyTorch, or a ZeRO config: zero2, zero3, or a JSON path."""
    holdout_fraction: float = 0.0
    """Share of examples held out to report accuracy/loss every epoch."""
    group_by_length: bool = True
    """Batch examples of similar length together (the same examples per epoch, less padding)."""
    precision: str = _one_of(*PRECISIONS, default="auto")
    """auto (bf16 autocast on a GPU and on a CPU with native bf16, where it trains small models
    ~1.3x faster; fp32 elsewhere: emulated bf16 is far slower), bf16 (autocast on any device)
    or fp32."""
    seed: int = 0


@dataclass(frozen=True)
class TrainingConfig:
    policy: TrainConfig = field(default_factory=TrainConfig)
    ppm: TrainConfig = field(default_factory=lambda: TrainConfig(holdout_fraction=0.05))


@dataclass(frozen=True)
class EvalConfig:
    methods: tuple[str, ...] = ("greedy", "majority_vote", "best_of_n_ppm", "mcts_ppm")
    n: tuple[int, ...] = (8, 16, 32, 64)
    """Samples / trajectories per problem for the N-based methods."""
    temperature: float = 1.0
    max_problems: int = 0
    """Cap per benchmark (0 = all)."""
    controls: tuple[str, ...] = ()
    """Compute-matched controls trained and evaluated every round: `rejection` (outcome-only
    data from the round's search policy), `outcome_loop` (outcome-only self-training carried
    from round to round on its own policies) and `continued` (more seed corpus; embedded
    default only). See stages/controls.py."""

    def __post_init__(self) -> None:
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise ConfigError(f"evaluate.controls: unknown control(s) {', '.join(unknown)} "
                              f"(known: {', '.join(CONTROLS)})")


CONTROLS = ("rejection", "outcome_loop", "continued")
"""Every control the pipeline knows (one task each per round, side by side)."""
LOOP_CONTROLS = ("outcome_loop",)
"""Controls whose policy goes on to their next round (the pipeline carries it like the round's policy)."""


@dataclass(frozen=True)
class StorageConfig:
    root: str = "./runs"
    """Where a run's artefacts go: a local directory or s3://bucket/prefix."""


@dataclass(frozen=True)
class RunConfig:
    name: str = "rstar"
    rounds: int = 4
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_lists(self.to_dict()), sort_keys=False)


def _check_composed_cap(where: str, value: int) -> None:
    if value < 0 or value == 1:
        raise ConfigError(f"{where}: expected 0 (upstream's 2 to 4) or at least 2, got {value}")


def _per_round(values: tuple[int, ...], round: int) -> int:
    if round < 1:
        raise ValueError(f"rounds count from 1, got {round}")
    return values[min(round, len(values)) - 1]


def _lists(value: Any) -> Any:
    """Tuples as lists, so YAML dumps stay plain."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def config_hash(config: RunConfig) -> str:
    """sha256 of the canonical JSON form; two runs with equal settings have equal hashes."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()


# -- building from plain data ------------------------------------------------------------------


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], where)
    if origin is tuple:
        if isinstance(value, (str, int, float)):
            value = [value]  # a scalar where a list is expected: `train: a.jsonl`
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {hint}")  # a bug in this module, not in the file


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}" if where else name) for name, value in data.items()}
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and f.name in kwargs and kwargs[f.name] not in choices:
            raise ConfigError(f"{where}.{f.name}: expected one of {', '.join(choices)}, got {kwargs[f.name]!r}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(source: str | Path, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """Plain data of a preset name or YAML path, with `extends` chains resolved."""
    path = Path(source)
    if not path.suffix:  # a preset name
        path = PRESETS_DIR / f"{source}.yaml"
        if not path.exists():
            names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise ConfigError(f"no preset named {source!r} (presets: {names})")
    if str(path) in seen:
        raise ConfigError(f"{path}: `extends` cycle through {' -> '.join(seen)}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parent = data.pop("extends", None)
    if parent is not None:
        parent_path = Path(parent) if Path(parent).suffix else parent
        if isinstance(parent_path, Path) and not parent_path.is_absolute():
            parent_path = path.parent / parent_path
        base, _ = _read_yaml(parent_path, seen + (str(path),))
        data = _merge(base, data)
    return data, str(path)


def parse_override(text: str) -> dict[str, Any]:
    """`search.candidates=4` -> {"search": {"candidates": 4}} (the value is read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key.path=value")
    value = yaml.safe_load(raw) if raw.strip() else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def from_dict(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    try:
        return _build(RunConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(source: str | Path = "default", overrides: Sequence[str] = ()) -> RunConfig:
    """A preset name or YAML path, plus `key.path=value` overrides, as a validated RunConfig."""
    data, origin = _read_yaml(source)
    for text in overrides:
        data = _merge(data, parse_override(text))
    return from_dict(data, f"{origin} (with overrides {', '.join(overrides)})" if overrides else str(origin))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
