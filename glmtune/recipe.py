"""The recipe: one typed, immutable object built from a TOML file, its `extends` chain and `--set` overrides.

Every command reads a recipe. Unknown keys are errors that suggest the nearest valid key, all problems are reported
at once with their TOML paths, and relative paths are resolved against the file that wrote them, so a shared base
recipe can live in another folder than the team recipe that extends it; a relative path given with `--set` is
resolved against the current folder, like any other path typed on the command line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)


class Section(BaseModel):
    # Numbers must be finite (`1e999` in TOML is inf); booleans are real TOML booleans, never "on" or 1.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MAX_COUNT = 1 << 20  # batch sizes, steps between logs/saves, token counts: beyond this a typo, not a plan
NAME_LIMIT = 100


class RunSection(Section):
    name: str = "run"  # run folder name under output_dir: a plain folder name, no path
    output_dir: str = Field("runs", min_length=1)  # relative to the working directory
    seed: int = Field(42, ge=0, lt=2**32)  # numpy and torch seeds are unsigned 32-bit

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not is_plain_name(name):
            raise ValueError(
                f"must be a plain folder name such as 'demo' (no path separators or spaces, not hidden, at most "
                f"{NAME_LIMIT} characters); put parent folders in run.output_dir"
            )
        return name


def is_plain_name(name: str) -> bool:
    """A single path component that is not hidden, '.' or '..' and needs no quoting on any filesystem."""
    forbidden = set('/\\:*?"<>|\0')
    return (
        0 < len(name) <= NAME_LIMIT
        and not name.startswith(".")
        and not any(c in forbidden or not c.isprintable() or c.isspace() for c in name)
    )


class ModelSection(Section):
    path: str  # a local model folder (or an export), or "builtin:tiny-glm4" and the other builtin tiny models
    family: str = "auto"  # auto-detected from the folder; or a registered family name
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = (
        "auto"  # auto: bf16 on a GPU that has it, else fp32
    )
    trust_remote_code: StrictBool = False  # never on unless asked
    allow_pickle: StrictBool = False  # load *.bin (pickle) weights; off means safetensors only


COLUMN_NAMES = ("prompt", "query", "response", "system", "history", "messages", "tools")
TAG_NAMES = (
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "observation_tag",
    "function_tag",
    "system_tag",
)


class MixEntry(Section):
    """How many records one source gives the train split: `weight` times its size, or exactly `samples`."""

    weight: float | None = Field(None, gt=0)  # 2.0: every record twice; 0.5: half of them
    samples: int | None = Field(None, gt=0)
    replace: StrictBool = False  # draw with replacement (else whole passes, then a sample of the rest)

    @model_validator(mode="after")
    def _one_amount(self) -> MixEntry:
        if (self.weight is None) == (self.samples is None):
            raise ValueError("give exactly one of weight or samples")
        return self


class DataSection(Section):
    train: list[str] = Field(
        default_factory=list
    )  # files or folders (.json / .jsonl), or entries of data.registry
    eval: list[str] = Field(default_factory=list)
    format: Literal["auto", "alpaca", "context_target", "messages", "sharegpt"] = "auto"
    registry: str | None = None  # a LLaMA-Factory dataset_info.json; train/eval may then name its entries
    columns: dict[str, str] = Field(
        default_factory=dict
    )  # for data files: e.g. {prompt = "content", response = "summary"}
    tags: dict[str, str] = Field(
        default_factory=dict
    )  # sharegpt turn keys and role names, LLaMA-Factory's names
    mix: dict[str, MixEntry] = Field(default_factory=dict)  # per source name (registry entry or file stem)
    seed: int = 42  # mixing and the eval split
    eval_fraction: float | None = Field(None, gt=0, lt=1)  # held out from train when there is no data.eval
    eval_count: int | None = Field(None, gt=0)  # or this many records
    variables: dict[str, str] = Field(default_factory=dict)  # fills placeholders in the data
    placeholders: Literal["{{name}}", "[NAME]", "<NAME>"] = "{{name}}"  # the placeholder syntax of the data
    system: str | None = None  # system prompt for samples that have none
    max_length: int = Field(1024, gt=8, le=MAX_COUNT)
    overlong: Literal["truncate", "drop"] = "truncate"
    cut: Literal["middle", "end"] = "middle"  # where truncation cuts the longest prompt text
    mask_history: StrictBool = False  # train the last assistant turn only
    # GLM-4.5+ reasoning: "template" trains each turn as its template renders it at inference (past turns' reasoning
    # cleared), "keep" keeps every turn's reasoning (clear_thinking=false), "off" trains thinking-off replies
    thinking: Literal["template", "keep", "off"] = "template"

    @model_validator(mode="after")
    def _data_keys(self) -> DataSection:
        problems = []
        if unknown := sorted(set(self.columns) - set(COLUMN_NAMES)):
            problems.append(f"data.columns: unknown {', '.join(unknown)}; use {', '.join(COLUMN_NAMES)}")
        if unknown := sorted(set(self.tags) - set(TAG_NAMES)):
            problems.append(f"data.tags: unknown {', '.join(unknown)}; use {', '.join(TAG_NAMES)}")
        if self.eval_fraction is not None and self.eval_count is not None:
            problems.append("data.eval_fraction and data.eval_count: give one of them")
        if self.eval and (self.eval_fraction is not None or self.eval_count is not None):
            problems.append(
                "data.eval_fraction/eval_count hold out part of train; with data.eval set, drop them"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def has_eval(self) -> bool:
        return bool(self.eval) or self.eval_fraction is not None or self.eval_count is not None


class MethodSection(Section):
    kind: Literal["lora", "full"] = "lora"


class LoraSection(Section):
    r: int = Field(8, gt=0, le=4096)
    alpha: int = Field(16, gt=0, le=65536)
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: list[str] | Literal["auto"] = "auto"  # auto: the family's targets for the architecture
    experts: bool = False  # also adapt the fused routed-expert tensors of an MoE (peft target_parameters)

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, targets: list[str] | str) -> list[str] | str:
        if isinstance(targets, list) and (not targets or not all(t.strip() for t in targets)):
            raise ValueError('list module names such as ["q_proj", "v_proj"], or "auto" for the family\'s')
        return targets


class TrainSection(Section):
    epochs: float = Field(3.0, gt=0, le=MAX_COUNT)
    max_steps: int = Field(-1, ge=-1, le=MAX_COUNT * 1024)  # > 0 overrides epochs
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, gt=0, le=MAX_COUNT)  # per device
    grad_accum: int = Field(1, gt=0, le=MAX_COUNT)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(10, gt=0, le=MAX_COUNT)
    eval_steps: int | None = Field(
        None, gt=0, le=MAX_COUNT
    )  # None: once per epoch when there is an eval split
    save_steps: int | None = Field(None, gt=0, le=MAX_COUNT)  # None: save once per epoch
    save_total_limit: int = Field(2, gt=0, le=MAX_COUNT)
    keep_best: StrictBool = False  # reload the checkpoint with the lowest eval loss at the end
    gradient_checkpointing: StrictBool = False
    group_by_length: StrictBool = False  # batches of similar length: less padding
    packing: StrictBool | Literal["auto"] = (
        "auto"  # samples share rows, isolated; auto: on where the family packs
    )
    loss: Literal["auto", "plain", "chunked", "fused"] = "auto"  # auto: fused (Liger, CUDA) or chunked
    report_to: list[Literal["tensorboard", "swanlab", "wandb"]] = Field(
        default_factory=list
    )  # logs under the run directory (swanlab, wandb offline); metrics.jsonl, loss.png always


SHARD_SIZE = r"[1-9][0-9]{0,5}([KMG]i?B|[KMG]IB)"  # what transformers' save_pretrained parses


class LaunchSection(Section):
    """How `train` runs; what each strategy needs and refuses is its row in glmtune.training.launch.BACKENDS."""

    strategy: Literal["single", "deepspeed"] = "single"  # deepspeed: ZeRO over processes/GPUs/nodes
    zero: str = "zero2"  # a preset (zero2, zero2_offload, zero3, zero3_offload) or a DeepSpeed JSON file
    processes_per_node: int = Field(
        1, gt=0, le=1024
    )  # GPUs per node (on a CPU-only machine: worker processes)
    nodes: int = Field(1, gt=0, le=65536)
    hostfile: str | None = None  # DeepSpeed hostfile, required when nodes > 1
    master_addr: str = "127.0.0.1"
    master_port: int = Field(29500, gt=0, lt=65536)
    quantize: Literal["none", "8bit", "4bit"] = "none"  # bitsandbytes base model, single process LoRA only
    gpu_memory_gb: float | None = Field(
        None, gt=0
    )  # per GPU; default: detected; plans that exceed it are refused
    allow_fp16: StrictBool = False  # fp16 overflows on GLM-4 families; only when forced


class GenerationSection(Section):
    max_new_tokens: int = Field(256, gt=0, le=MAX_COUNT)
    do_sample: StrictBool = False
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.8, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)


class ExportSection(Section):
    max_shard_size: str = "2GB"  # an integer and a unit: 500MB, 2GB, 4GiB

    @field_validator("max_shard_size")
    @classmethod
    def _parsable_size(cls, size: str) -> str:
        if not re.fullmatch(SHARD_SIZE, size):
            raise ValueError("expected an integer and a unit, such as 500MB, 2GB or 4GiB")
        return size


class EvalSection(Section):
    data: list[str] = Field(default_factory=list)  # prompt/reference pairs; default: data.eval
    max_samples: int | None = Field(None, gt=0)
    compare_base: StrictBool = True  # also score the untuned base model
    batch_size: int = Field(8, gt=0, le=MAX_COUNT)
    retention: list[str] = Field(default_factory=list)  # general questions: do base and tuned still agree?


class Recipe(Section):
    """The whole recipe. `source` is the file it was read from (for messages), not a TOML key."""

    run: RunSection = RunSection()
    model: ModelSection
    data: DataSection = DataSection()
    method: MethodSection = MethodSection()
    lora: LoraSection = LoraSection()
    train: TrainSection = TrainSection()
    launch: LaunchSection = LaunchSection()
    generation: GenerationSection = GenerationSection()
    export: ExportSection = ExportSection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _combinations(self) -> Recipe:
        problems = [
            f"{section}.{key}: {problem}"
            for section, key in (*sorted(PATH_KEYS), ("run", "output_dir"))
            for value in _as_list(getattr(getattr(self, section), key))
            if (problem := path_problem(value))
        ]
        if self.launch.quantize != "none" and self.method.kind != "lora":
            problems.append(
                "launch.quantize needs method.kind = 'lora' (a quantized base cannot be fully fine-tuned)"
            )
        train = self.train
        if train.keep_best and not self.data.has_eval:
            problems.append("train.keep_best needs an eval split: set data.eval or data.eval_fraction")
        if train.keep_best and bool(train.eval_steps) != bool(train.save_steps):
            problems.append(
                "train.keep_best needs train.save_steps and train.eval_steps both set (or neither)"
            )
        if train.keep_best and train.eval_steps and train.save_steps and train.save_steps % train.eval_steps:
            problems.append("train.keep_best needs train.save_steps to be a multiple of train.eval_steps")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# Keys whose values may name data.registry entries instead of files.
SOURCE_KEYS = {("data", "train"), ("data", "eval")}
# Keys whose values are file paths: resolved against the folder of the TOML file that sets them (--set: the
# current folder).
PATH_KEYS = {
    ("data", "train"),
    ("data", "eval"),
    ("eval", "data"),
    ("eval", "retention"),
    ("data", "registry"),
    ("model", "path"),
    ("launch", "hostfile"),
    ("launch", "zero"),
}


def path_problem(value: str) -> str | None:
    """Why a path string cannot name a file on any common filesystem, or None."""
    if "\0" in value:
        return "a path cannot hold a NUL character"
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in Path(value).parts):
        return "a path component is longer than 255 bytes"
    return None


def _as_list(value: Any) -> list[str]:
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]


def is_source_name(value: str) -> bool:
    """A bare word such as "alpaca_zh" rather than a path: no folder separator, no data-file suffix."""
    return "/" not in value and "\\" not in value and Path(value).suffix not in (".json", ".jsonl")
