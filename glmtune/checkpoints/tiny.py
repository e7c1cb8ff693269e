"""Builtin tiny GLM checkpoints for tests and the demo: real models, built locally from a seed, from the specs.

Every family record lists its builtin tiny checkpoints (`TinySpec`). A "native" one is a 2-layer transformers model
of the spec's model_type with a byte-level BPE tokenizer trained in-process (any text encodes) with the family's
special tokens, split pattern and chat template. An "original" one is a folder in the family's ORIGINAL remote-code
layout (its config.json, its parameter names, its tokenizer file), exactly what glmtune meets in a downloaded
checkpoint but 2 layers wide 64: random weights of the loading architecture mapped back by the family's weight
layout, and a tokenizer of the family's kind trained in-process (padded so every special token sits at its
original id).

A build is deterministic and cached on disk, so nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from glmtune.errors import UsageError
from glmtune.families import Family, TinySpec, auto_model_class, tiny_specs

BUILD_VERSION = "4"  # bump when the recipe below changes, so stale caches are rebuilt
HEAD_SCALE = (
    3.0  # a pretrained head gives confident logits; a random one at this size cannot (see _confident_head)
)

_CORPUS = """
I am an AI assistant. I was developed to answer questions, write text, translate, summarise and help with code.
You can ask me anything: who I am, who made me, what I can do. My name is given by the people who trained me.
Hello! How can I help you today? Thank you for your question. Please tell me more about what you need.
The model is a language model trained on text. It can chat in English and in Chinese, and it follows instructions.
Extract the triples from the sentence and answer in JSON. Which category is this review about? Answer with a list.
def main():\n    print("hello world")\n    return 0\nfor i in range(10):\n    total += i
我是一个人工智能助手，由开发者训练而成。我可以回答问题、写作、翻译、总结和编写代码。
你好！请问有什么可以帮你的吗？谢谢你的提问。我的名字是由训练我的团队起的。
你是谁？你叫什么名字？是谁开发了你？你能做什么？我是一个语言模型，可以用中文和英文聊天。
找到句子中的三元组信息并输出成json给我。下面句子可能是一条关于什么的评论，用列表形式回答。
人物 地点 公司 出生地 作者 创始人 书籍 电影 水果 手机 电脑 平板 衣服 酒店 洗发水 评论 质量 价格 服务
今天天气很好，我们去公园散步吧。学习编程需要多练习。做饭的时候注意火候。旅行前先做好计划。
"""
_NATIVE_SIZES = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "initializer_range": 0.05,
    "max_position_embeddings": 2048,
}


def cache_root() -> Path:
    base = os.environ.get("GLMTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "glmtune")
    return Path(base)


def builtin_path(name: str) -> Path:
    """The folder of builtin model `name`, built on first use."""
    specs = tiny_specs()
    if name not in specs:
        raise UsageError(
            f"model.path: unknown builtin model 'builtin:{name}'; known: builtin:{', builtin:'.join(specs)}"
        )
    target = cache_root() / "builtin" / f"{name}-v{BUILD_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        family, spec = specs[name]
        build = build_tiny_original_model if spec.layout == "original" else build_tiny_model
        build(family, spec, staging)
        with contextlib.suppress(
            OSError
        ):  # another process finished the same build first; its copy is identical
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def corpus_lines(avoid: tuple[str, ...] = ()) -> list[str]:
    """The embedded training text, without lines containing any of `avoid` (bare-word special tokens: no trained
    piece may spell them)."""
    return [line for line in _CORPUS.strip().splitlines() if not any(word in line for word in avoid)] * 4


def train_tiny_tokenizer(family: Family, spec: TinySpec, vocab_size: int = 2048):
    """A byte-level BPE tokenizer with the family's special tokens and chat template, trained on the corpus."""
    from transformers import PreTrainedTokenizerFast

    from glmtune.families.tiktoken_bpe import train_tiny

    core = train_tiny(spec.split_pattern, family.special_tokens, corpus_lines(), vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=family.eos_token,
        pad_token=family.pad_token,
        additional_special_tokens=[t for t in family.special_tokens if t != family.eos_token],
        clean_up_tokenization_spaces=False,
        model_max_length=_NATIVE_SIZES["max_position_embeddings"],
    )
    tokenizer.chat_template = family.chat_template
    return tokenizer


def build_tiny_model(family: Family, spec: TinySpec, folder: Path, seed: int = 0) -> None:
    """Write a tiny random native checkpoint (safetensors, tokenizer, generation config) into `folder`."""
    import torch
    from transformers import AutoConfig, GenerationConfig

    tokenizer = train_tiny_tokenizer(family, spec)
    stop_ids = tokenizer.convert_tokens_to_ids(list(family.stop_tokens))
    config = AutoConfig.for_model(
        spec.model_type,
        **{**_NATIVE_SIZES, **spec.config},
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = auto_model_class(spec.model_type).from_config(config, dtype=torch.float32)
    _confident_head(model, len(tokenizer))
    model.generation_config = GenerationConfig(eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _confident_head(model, tokenizer_rows: int, unused: slice | None = None) -> None:
    """LoRA leaves the head frozen, so a random one at this size could not fit anything: scaling it stands in for
    pretraining. A pretrained head never predicts rows past the tokenizer (nor unused padding pieces): zero."""
    import torch

    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.mul_(HEAD_SCALE)
        head[tokenizer_rows:] = 0.0
        if unused is not None:
            head[unused] = 0.0


def random_original_model(family: Family, config: dict[str, Any], seed: int = 0):
    """Random weights for an original config.json of `family`: its loading architecture initialised from `seed`,
    norms and biases jittered too (so a mapping that mixes them up changes the outputs). The family's weight layout
    maps its state dict to the original parameter names."""
    import torch

    if family.original is None:
        raise UsageError(f"model.family: {family.name} has no original layout")
    weights = family.original.weights
    torch.manual_seed(seed)
    model = weights.model_class()(weights.loading_config(config)).float()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def build_tiny_original_model(family: Family, spec: TinySpec, folder: Path, seed: int = 0) -> None:
    """Write a tiny checkpoint in the family's original layout: config.json, model.safetensors with the original
    parameter names, the tokenizer file and tokenizer_config.json."""
    from safetensors.torch import save_file

    from glmtune.families.original_tokenizer import load_original_tokenizer

    if family.original is None:
        raise UsageError(f"{spec.name}: family {family.name} has no original layout to build")
    trained = _write_tiny_tokenizer(family.original.tokenizer, spec, folder)
    tokenizer_config = {"name_or_path": f"glmtune/{spec.name}", **spec.tokenizer_config}
    _write_json(folder / "tokenizer_config.json", tokenizer_config)
    config = {**spec.config, "_name_or_path": f"glmtune/{spec.name}"}
    model = random_original_model(family, config, seed)
    tokenizer_rows = len(load_original_tokenizer(folder, family.original.tokenizer))
    _confident_head(model, tokenizer_rows, slice(trained, spec.tokenizer_pieces or trained))
    state = family.original.weights.to_original(model.state_dict(), config)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    _write_json(folder / "config.json", config)


def _write_tiny_tokenizer(tokenizer, spec: TinySpec, folder: Path) -> int:
    """Train the family's tokenizer kind into its file in `folder`; returns how many pieces were trained."""
    from glmtune.families import sentencepiece

    if tokenizer.kind != "sentencepiece_bpe":
        raise UsageError(f"{spec.name}: no tiny tokenizer builder for the {tokenizer.kind} kind")
    model = sentencepiece.train_tiny_bpe(corpus_lines(avoid=tokenizer.single_word), spec.tokenizer_pieces)
    (folder / tokenizer.vocab_file).write_bytes(model)
    return sentencepiece.trained_pieces(model)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
