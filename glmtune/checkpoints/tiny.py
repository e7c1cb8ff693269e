"""Builtin tiny GLM checkpoints for tests and the demo: real transformers models, built locally from a seed.

`builtin:tiny-glm4` is a 2-layer `Glm4ForCausalLM` (the GLM-4-0414 architecture) and `builtin:tiny-glm` a 2-layer
`GlmForCausalLM` (glm-4-9b-chat-hf). Both carry a byte-level BPE tokenizer trained in-process (any text encodes)
with the GLM-4 special tokens, its split pattern and chat template.

`builtin:tiny-chatglm3` and `builtin:tiny-chatglm2` are folders in the ORIGINAL remote-code layout (config.json
model_type "chatglm" with the official fields, `transformer.encoder.layers.N...` weights, a SentencePiece
`tokenizer.model`), exactly what glmtune meets in a downloaded ChatGLM3-6B / ChatGLM2-6B but 2 layers wide 64. Their
SentencePiece BPE model is trained in-process and padded with unused pieces to the original 64,789, so every special
token sits at its original id (`[gMASK]` 64790, `<|user|>` 64795).

A build is deterministic and cached on disk, so nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmtune.families import CHATGLM2, CHATGLM3, GLM4, Family

BUILD_VERSION = "3"  # bump when the recipe below changes, so stale caches are rebuilt

# name -> (transformers model_type, config fields beyond the shared tiny sizes)
TINY_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-glm4": ("glm4", {}),
    "tiny-glm": ("glm", {}),
    "tiny-glm4-moe": (
        "glm4_moe",
        {
            "moe_intermediate_size": 256,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
        },
    ),  # fmt: skip
}

# THUDM/chatglm3-6b's config.json (ChatGLM2-6B's differs only in seq_length); convert.tiny_original_checkpoint shrinks
# the sizes. No auto_map: the tiny folders ship no code, as glmtune never runs it.
_CHATGLM_CONFIG: dict[str, Any] = {
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "ffn_hidden_size": 13696,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 28,
    "original_rope": True,
    "padded_vocab_size": 65024,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 8192,
    "use_cache": True,
    "torch_dtype": "float16",
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


@dataclass(frozen=True)
class TinyOriginal:
    """A builtin original-layout model: its family and what its official folder differs in."""

    family: Family
    seq_length: int
    tokenizer_config: dict[str, Any] = field(default_factory=dict)


ORIGINAL_TINY_MODELS = {
    "tiny-chatglm3": TinyOriginal(  # ChatGLM3-6B's tokenizer_config.json has a chat template and the role tokens
        CHATGLM3, 8192, {"chat_template": CHATGLM3.chat_template, "eos_token": "</s>", "pad_token": "<unk>"}
    ),
    "tiny-chatglm2": TinyOriginal(CHATGLM2, 32768),
}
CHATGLM_SP_PIECES = 64789  # ChatGLM2/3's tokenizer.model size: the special tokens follow at these ids
_SP_UNUSED = 5  # sentencepiece_model.proto piece type UNUSED: in the vocabulary, never produced from text

# GLM-4's tiktoken split pattern: the tiny tokenizer pre-tokenizes text the same way the real one does.
GLM4_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

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


def cache_root() -> Path:
    base = os.environ.get("GLMTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "glmtune")
    return Path(base)


def builtin_path(name: str) -> Path:
    """The folder of builtin model `name`, built on first use."""
    from glmtune.errors import UsageError

    known = [*TINY_MODELS, *ORIGINAL_TINY_MODELS]
    if name not in known:
        raise UsageError(
            f"model.path: unknown builtin model 'builtin:{name}'; known: builtin:{', builtin:'.join(known)}"
        )
    target = cache_root() / "builtin" / f"{name}-v{BUILD_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if name in ORIGINAL_TINY_MODELS:
            build_tiny_original_model(ORIGINAL_TINY_MODELS[name], staging)
        else:
            build_tiny_model(name, staging)
        with contextlib.suppress(
            OSError
        ):  # another process finished the same build first; its copy is identical
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def train_tiny_tokenizer(vocab_size: int = 2048):
    """A byte-level BPE tokenizer with the GLM-4 special tokens, trained on the embedded corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GLM4_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(GLM4.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS.strip().splitlines() * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=GLM4.eos_token,
        pad_token=GLM4.pad_token,
        additional_special_tokens=[t for t in GLM4.special_tokens if t not in (GLM4.eos_token,)],
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    tokenizer.chat_template = GLM4.chat_template
    return tokenizer


def build_tiny_model(name: str, folder: Path, seed: int = 0) -> None:
    """Write a tiny random GLM checkpoint (safetensors, tokenizer, generation config) into `folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    tokenizer = train_tiny_tokenizer()
    stop_ids = tokenizer.convert_tokens_to_ids(list(GLM4.stop_tokens))
    model_type, extra = TINY_MODELS[name]
    config = AutoConfig.for_model(
        model_type,
        **extra,
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        initializer_range=0.05,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # A pretrained head gives confident logits; a random one at this size cannot, and then LoRA (which leaves the
    # head frozen) could not fit anything. Scaling the head stands in for pretraining.
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    model.generation_config = GenerationConfig(eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_tiny_original_model(spec: TinyOriginal, folder: Path, seed: int = 0) -> None:
    """Write a tiny ChatGLM2/3 checkpoint in the original layout: config.json, model.safetensors with the original
    parameter names, tokenizer.model and tokenizer_config.json."""
    import torch
    from safetensors.torch import save_file

    from glmtune.checkpoints.convert import tiny_original_checkpoint
    from glmtune.families.tokenizers import load_original_tokenizer

    name = f"glmtune/tiny-{spec.family.name}"
    sentencepiece_model = train_tiny_sentencepiece()
    (folder / "tokenizer.model").write_bytes(sentencepiece_model)
    tokenizer_config = {"name_or_path": name, "tokenizer_class": "ChatGLMTokenizer", "remove_space": False}
    _write_json(folder / "tokenizer_config.json", tokenizer_config | spec.tokenizer_config)
    real = {**_CHATGLM_CONFIG, "_name_or_path": name, "seq_length": spec.seq_length}
    config, state = tiny_original_checkpoint(real, vocab=real["padded_vocab_size"], seed=seed)
    tokenizer_size = len(load_original_tokenizer(folder, spec.family.original_tokenizer))
    with torch.no_grad():
        # As in build_tiny_model, a confident head stands in for pretraining; and a pretrained head never predicts
        # the unused padding pieces or the rows past the tokenizer, so theirs are zero.
        head = state["transformer.output_layer.weight"].mul_(3.0)
        head[_trained_pieces(sentencepiece_model) : CHATGLM_SP_PIECES] = 0.0
        head[tokenizer_size:] = 0.0
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_json(folder / "config.json", config)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def train_tiny_sentencepiece(vocab_size: int = 1000) -> bytes:
    """A SentencePiece BPE model trained like ChatGLM2/3's (byte fallback, dummy prefix, identity normalization,
    whitespace kept), padded with unused pieces to ChatGLM's 64,789 so its special tokens get their original ids."""
    import io

    import sentencepiece

    # The bare words `sop` / `eop` are special tokens of ChatGLM2/3, so no piece may spell them: a BPE piece is a
    # substring of the training text, hence lines containing them ("people") are left out.
    lines = [line for line in _CORPUS.strip().splitlines() if "sop" not in line and "eop" not in line]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    data = model.getvalue()
    count = _trained_pieces(data)
    # Protobuf appends repeated fields met later in the message, so extra pieces can follow the trained model's bytes.
    return data + b"".join(_sp_piece(f"<unused_{i}>", _SP_UNUSED) for i in range(count, CHATGLM_SP_PIECES))


def _trained_pieces(model: bytes) -> int:
    """Pieces before the unused padding (all of them in a freshly trained model)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    return next((i for i in range(len(processor)) if processor.is_unused(i)), len(processor))


def _sp_piece(piece: str, kind: int) -> bytes:
    """A ModelProto `pieces` entry (field 1): SentencePiece {piece = 1, score = 2, type = 3}."""
    body = _proto_bytes(1, piece.encode("utf-8")) + b"\x15" + struct.pack("<f", 0.0) + bytes([0x18, kind])
    return _proto_bytes(1, body)


def _proto_bytes(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
