"""Builtin tiny GLM checkpoints for tests and the demo: real transformers models, built locally from a seed.

`builtin:tiny-glm4` is a 2-layer `Glm4ForCausalLM` (the GLM-4-0414 architecture) and `builtin:tiny-glm` a 2-layer
`GlmForCausalLM` (glm-4-9b-chat-hf). Both carry a byte-level BPE tokenizer trained in-process (any text encodes)
with the GLM-4 special tokens, its split pattern and chat template. A build is deterministic and cached on disk, so
nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from glmtune.families import GLM4

BUILD_VERSION = "3"  # bump when the recipe below changes, so stale caches are rebuilt

TINY_MODELS = {
    "tiny-glm4": "glm4",
    "tiny-glm": "glm",
}

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

    if name not in TINY_MODELS:
        raise UsageError(
            f"model.path: unknown builtin model 'builtin:{name}'; known: builtin:{', builtin:'.join(TINY_MODELS)}"
        )
    target = cache_root() / "builtin" / f"{name}-v{BUILD_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
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
    config = AutoConfig.for_model(
        TINY_MODELS[name],
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
