"""ChatGLM-6B (v1, THUDM/chatglm-6b) as a native transformers 5 model, so it trains and exports without remote code.

Written from THUDM's `modeling_chatglm.py` / `configuration_chatglm.py` (the remote code, which only loads on
transformers <= 4.33) and numerically equal to it in fp32. Module and parameter names are the original ones, so an
original checkpoint loads by name with no conversion and LoRA can target `query_key_value`, `dense`,
`dense_h_to_4h`, `dense_4h_to_h`. The architecture, in the original's words:

- GLM-130B blocks: LayerNorm, then the residual is taken from the *normalised* input scaled by alpha
  (`attention_input * alpha + attention_output`, `mlp_input * alpha + mlp_output`), tanh-GeLU MLP, biases everywhere;
- fused qkv laid out per head ([q | k | v] of each head in turn);
- 2D rotary embedding (`position_encoding_2d`): the first half of each head is rotated with the position ids, the
  second half with the block position ids (`rotate_half` style);
- a prefix-LM mask (`get_masks`): bidirectional over the context before `<sop>`, causal from `<sop>` on; positions
  (`get_position_ids`): tokens from `<sop>` on sit at the `[gMASK]` position, their block positions count 1, 2, 3...
- lm_head tied to the word embeddings (config.json sets no `tie_word_embeddings`, so transformers' default True
  made the remote code's `from_pretrained` tie them).

Masks and positions come from `input_ids` when not given, as in the original. `register()` lets the Auto classes
load saved folders (config.json `model_type` "chatglm6b"). `glmtune export` copies this file into the exported folder
as its remote code, so it imports nothing from glmtune that it cannot do without.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.configuration_utils import PretrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging

try:
    from glmtune.errors import UsageError
except ImportError:  # running as an export's remote code without glmtune installed

    class UsageError(ValueError):  # type: ignore[no-redef]
        """A problem the user can fix."""


logger = logging.get_logger(__name__)

MODEL_TYPE = "chatglm6b"  # not "chatglm": that name belongs to the remote code's config

# GLMBlock takes `num_layers=28` as a default argument that ChatGLMModel never passes, so the remote code runs every
# checkpoint with alpha = sqrt(2 * 28), whatever config.num_layers says; tiny test models included.
RESIDUAL_ALPHA = (2 * 28) ** 0.5
MASKED_SCORE = -10000.0  # attention_fn's fill for blocked scores (finite: a fully blocked row stays finite)
# transformers 5.24 renamed the cache argument and output field `past_key_values` to `cache`. This file also runs as an
# export's remote code on either side of the rename, so it asks the installed output class which name it has.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class ChatGLM6BConfig(PretrainedConfig):
    """The original config fields under their original names. The defaults are configuration_chatglm.py's, equal to
    the official THUDM/chatglm-6b config.json; the special token ids place the context and the generated tokens."""

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]  # Trainer's evaluation compares logits only
    # transformers' generic code (DynamicCache, generate) asks for these standard names
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "intermediate_size": "inner_hidden_size",
        "max_position_embeddings": "max_sequence_length",
    }

    vocab_size: int = 130528
    hidden_size: int = 4096
    num_layers: int = 28
    num_attention_heads: int = 32
    inner_hidden_size: int = 16384
    layernorm_epsilon: float = 1e-5
    max_sequence_length: int = 2048
    position_encoding_2d: bool = True
    use_cache: bool = True
    bos_token_id: int = 130004  # <sop>: the context (bidirectional) ends before it
    eos_token_id: int = 130005  # <eop>
    mask_token_id: int = 130000  # [MASK]
    gmask_token_id: int = 130001  # [gMASK]: generated tokens take its position
    pad_token_id: int = 3  # <pad>
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        head_dim, rest = divmod(self.hidden_size, self.num_attention_heads)
        if rest or head_dim % 4:
            raise UsageError(
                f"hidden_size {self.hidden_size} / num_attention_heads {self.num_attention_heads} must be a whole "
                "head size divisible by 4 (each half of a head is rotated with rotate_half)"
            )
        if not self.position_encoding_2d:
            raise UsageError("position_encoding_2d=false: only ChatGLM-6B's 2D rotary layout is supported")

    @classmethod
    def from_original(cls, original: dict) -> ChatGLM6BConfig:
        """From the remote code's config.json dict; refuses what this port does not implement."""
        if original.get("quantization_bit", 0):
            raise UsageError(
                f"config.json: quantization_bit={original['quantization_bit']} (int4/int8 "
                "checkpoints) is not supported; use the fp16 THUDM/chatglm-6b weights"
            )
        if original.get("pre_seq_len") is not None:
            raise UsageError("config.json: pre_seq_len is set (a P-tuning v2 prefix encoder): not supported")
        fields = {key: original[key] for key in ORIGINAL_FIELDS if key in original}
        dtype = original.get("torch_dtype", original.get("dtype"))
        return cls(**fields, tie_word_embeddings=original.get("tie_word_embeddings", True), dtype=dtype)


# ChatGLM6BConfig declares exactly the remote code's config.json fields, under the same names, plus the tie.
ORIGINAL_FIELDS = tuple(name for name in ChatGLM6BConfig.__annotations__ if name != "tie_word_embeddings")


def first_index(input_ids: Tensor, token_id: int) -> tuple[Tensor, Tensor]:
    """Per row, the index of the first `token_id` (0 where absent) and whether the row has one."""
    found = input_ids == token_id
    return found.int().argmax(-1), found.any(-1)


def require(present: Tensor, name: str) -> None:
    # the original's `seq.index(token)` fails the same way, with a less helpful message
    if not bool(present.all()):
        raise ValueError(f"ChatGLM-6B needs {name} in every input row to know where the context ends")


def prefix_lm_mask(input_ids: Tensor, bos_token_id: int) -> Tensor:
    """`get_masks`: [batch, 1, seq, seq], True where attention is BLOCKED (the original's convention).
    Every token sees the whole context before `<sop>`; from `<sop>` on attention is causal."""
    context_lengths, has_bos = first_index(input_ids, bos_token_id)
    require(has_bos, f"the <sop> token (id {bos_token_id})")
    index = torch.arange(input_ids.size(1), device=input_ids.device)
    causal = index[None, :] <= index[:, None]
    in_context = index[None, None, :] < context_lengths[:, None, None]
    return ~(causal[None] | in_context)[:, None]


def position_ids_2d(input_ids: Tensor, config: ChatGLM6BConfig, padding_mask: Tensor | None = None) -> Tensor:
    """`get_position_ids` (2D): [batch, 2, seq] of (positions, block positions).
    From `<sop>` on, positions stay at the `[gMASK]` (else `[MASK]`) index and block positions count 1, 2, 3...
    With a 2D padding mask, left padding comes off the positions as in the original tokenizer's `_pad` (rotary is
    relative, so this only keeps the rounding the same)."""
    context_lengths, has_bos = first_index(input_ids, config.bos_token_id)
    require(has_bos, f"the <sop> token (id {config.bos_token_id})")
    gmask_at, has_gmask = first_index(input_ids, config.gmask_token_id)
    mask_at, has_mask = first_index(input_ids, config.mask_token_id)
    require(has_gmask | has_mask, f"[gMASK] or [MASK] (ids {config.gmask_token_id}, {config.mask_token_id})")
    mask_positions = torch.where(has_gmask, gmask_at, mask_at)  # [gMASK] wins when a row has both
    index = torch.arange(input_ids.size(1), device=input_ids.device)[None]
    generated = index >= context_lengths[:, None]
    positions = torch.where(generated, mask_positions[:, None], index)
    blocks = torch.where(generated, index - context_lengths[:, None] + 1, 0)
    if padding_mask is not None and padding_mask.dim() == 2:
        left_padding = padding_mask.int().argmax(-1)  # index of the first real token
        positions = (positions - left_padding[:, None]).clamp(min=0)
    return torch.stack((positions, blocks), dim=1)


def rotary_inv_freq(dim: int, device: torch.device | None = None) -> Tensor:
    """RotaryEmbedding's `inv_freq` (base 10000), rounded to fp16 as the original does whatever the model dtype."""
    exponents = torch.arange(0, dim, 2, device=device).float() / dim
    return (1.0 / 10000**exponents).half()


def rotary_tables(position_ids: Tensor, dim: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """RotaryEmbedding + the F.embedding lookup for `position_ids` [batch, 2, seq]: (cos, sin), each
    [batch, 1, seq, 2, dim], of the positions ([..., 0, :]) and the block positions ([..., 1, :])."""
    # An fp16 model computes the angles in fp16 from the fp16-rounded inv_freq; doing the same keeps logits equal to
    # the remote code's (fp32 exactly).
    angle_dtype = torch.float16 if dtype == torch.float16 else torch.float32
    inv_freq = rotary_inv_freq(dim, position_ids.device).to(angle_dtype)
    freqs = position_ids.to(angle_dtype)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1).transpose(1, 2)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_2d(x: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
    """First half of each head rotated by positions, second half by block positions."""
    cos, sin = rotary
    halves = x.unflatten(-1, (2, -1))  # [batch, heads, seq, 2, head_dim / 2]
    return (halves * cos + rotate_half(halves) * sin).flatten(-2)


def shifted_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """The original's loss: tokens < n predict n, in fp32, mean over the labels that are not -100."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.size(-1))
    return F.cross_entropy(shift_logits, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)


def gelu(x: Tensor) -> Tensor:
    """The original `gelu_impl` (OpenAI's tanh approximation), written out so the rounding is the same."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLM6BConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, blocked: Tensor, rotary: tuple, cache: DynamicCache | None) -> Tensor:
        batch, seq, _ = x.shape
        # the fused output is [q | k | v] per head, not three contiguous blocks
        mixed = self.query_key_value(x).view(batch, seq, self.heads, 3 * self.head_dim).transpose(1, 2)
        query, key, value = mixed.split(self.head_dim, dim=-1)
        query, key = apply_rotary_2d(query, rotary), apply_rotary_2d(key, rotary)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_id)
        # attention_fn: the query is divided by (sqrt(d) * (layer_id + 1)) and the scores multiplied back in fp32
        # after masking, an fp16 overflow guard (it cancels in fp32; blocked scores end at -10000 * coeff).
        coeff = float(self.layer_id + 1)
        scores = torch.matmul(query / (math.sqrt(self.head_dim) * coeff), key.transpose(-1, -2))
        scores = scores.masked_fill(blocked, MASKED_SCORE)
        probs = F.softmax(scores.float() * coeff, dim=-1).to(value.dtype)
        context = torch.matmul(probs, value).transpose(1, 2).reshape(batch, seq, -1)
        return self.dense(context)


class GLU(nn.Module):
    def __init__(self, config: ChatGLM6BConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.inner_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.inner_hidden_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense_4h_to_h(gelu(self.dense_h_to_4h(x)))


class GLMBlock(GradientCheckpointingLayer):
    def __init__(self, config: ChatGLM6BConfig, layer_id: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = SelfAttention(config, layer_id)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GLU(config)

    # The hidden states go positionally and the cache as `cache=`: GradientCheckpointingLayer checkpoints the
    # positional tensors and drops a `cache` keyword under checkpointing (a replayed layer would append twice).
    def forward(
        self, hidden: Tensor, blocked: Tensor, rotary: tuple, cache: DynamicCache | None = None
    ) -> Tensor:
        # GLM-130B residuals: from the normalised input, scaled by alpha
        attention_input = self.input_layernorm(hidden)
        attention_output = self.attention(attention_input, blocked, rotary, cache)
        hidden = attention_input * RESIDUAL_ALPHA + attention_output
        mlp_input = self.post_attention_layernorm(hidden)
        return mlp_input * RESIDUAL_ALPHA + self.mlp(mlp_input)


class ChatGLM6BTransformer(nn.Module):
    """The original `ChatGLMModel`'s parameters: word_embeddings, layers, final_layernorm (no position table)."""

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__()
        self.word_embeddings: nn.Module = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GLMBlock(config, layer_id) for layer_id in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class ChatGLM6BForCausalLM(PreTrainedModel, GenerationMixin):
    config: ChatGLM6BConfig
    config_class = ChatGLM6BConfig  # the annotation alone is a string here (postponed annotations)
    base_model_prefix = "transformer"
    _no_split_modules = ["GLMBlock"]
    _tied_weights_keys = {"lm_head.weight": "transformer.word_embeddings.weight"}
    # the remote code registers rotary_emb.inv_freq as a buffer (so checkpoints may carry it) but never loads it
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq$"]
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False  # the loss is the original's mean over the batch's supervised tokens

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__(config)
        self.transformer = ChatGLM6BTransformer(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.transformer.word_embeddings = value

    def blocked_attention(self, input_ids, attention_mask, query_length: int, past_length: int) -> Tensor:
        """True where attention is blocked, [batch or 1, 1, query, past + query].
        The first pass uses the prefix-LM mask; later tokens come after `<sop>`, so they see everything before them.
        A 4D bool mask is taken as given (original convention); a 2D one (1 = token) blocks padding columns."""
        if attention_mask is not None and attention_mask.dim() == 4:
            if attention_mask.dtype != torch.bool:
                raise ValueError("a 4D attention_mask must be bool, True where attention is blocked")
            return attention_mask
        if past_length == 0:
            if input_ids is None:
                raise ValueError("without input_ids, pass a 4D bool attention_mask (the prefix-LM mask)")
            blocked = prefix_lm_mask(input_ids, self.config.bos_token_id)
        else:
            rows = torch.arange(query_length, device=self.device)[:, None] + past_length
            blocked = (torch.arange(past_length + query_length, device=self.device)[None] > rows)[None, None]
        if attention_mask is not None:
            blocked = blocked | (attention_mask[:, None, None, :] == 0)
        return blocked

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: Tensor | None = None,
        past_key_values: DynamicCache | None = None,  # the cache's name before transformers 5.24
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (and the shifted cross-entropy with -100 ignored when `labels` are given) and the kv cache.
        Other flags callers pass (return_dict, output_attentions=False...) are accepted; per-layer outputs are not
        produced."""
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise NotImplementedError("this ChatGLM-6B port returns no per-layer attentions / hidden states")
        cache = cache if cache is not None else past_key_values
        if not self.wants_cache(use_cache, labels):
            cache = None
        elif cache is None:
            cache = DynamicCache(config=self.config)
        hidden = self.transformer.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if input_ids is None or past_length:
                raise ValueError("pass position_ids ([batch, 2, seq]) with inputs_embeds or a cache")
            position_ids = position_ids_2d(input_ids, self.config, attention_mask)
        blocked = self.blocked_attention(input_ids, attention_mask, hidden.size(1), past_length)
        rotary_dim = self.config.hidden_size // self.config.num_attention_heads // 2
        rotary = rotary_tables(position_ids, rotary_dim, hidden.dtype)
        for layer in self.transformer.layers:
            hidden = layer(hidden, blocked=blocked, rotary=rotary, cache=cache)
        logits = self.lm_head(self.transformer.final_layernorm(hidden))
        loss = None if labels is None else shifted_cross_entropy(logits, labels)
        named_cache: dict[str, Any] = {CACHE_NAME: cache}
        return CausalLMOutputWithPast(loss=loss, logits=logits, **named_cache)

    def wants_cache(self, use_cache: bool | None, labels: Tensor | None) -> bool:
        """No kv cache while training (labels given, or a forward that will be backpropagated), as transformers'
        models do: nothing reads it, and a gradient-checkpointed layer's recompute would append its keys again.
        Without gradients (generation, even from a model in training mode) the config's `use_cache` decides."""
        if labels is not None or (self.training and torch.is_grad_enabled()):
            if use_cache:
                logger.warning_once("ChatGLM-6B: no kv cache while training; setting `use_cache=False`.")
            return False
        return bool(self.config.use_cache if use_cache is None else use_cache)

    # generate() passes everything by keyword; the rest of the base signature (inputs_embeds...) is not supported
    def prepare_inputs_for_generation(  # type: ignore[override]
        self, input_ids, cache=None, attention_mask=None, past_key_values=None, **kwargs
    ) -> dict:
        """The original's: the whole prompt first, then only the new tokens, each at the `[gMASK]` position with block
        positions 2, 3, ... (what `get_position_ids` gives them in the full sequence). Passed position_ids are not
        used: generate() would extend them as 1D positions. The cache comes as `cache` (transformers >= 5.24) or
        `past_key_values` (earlier)."""
        cache = cache if cache is not None else past_key_values
        past_length = cache.get_seq_length() if cache is not None else 0
        position_ids = position_ids_2d(input_ids, self.config, attention_mask)[..., past_length:]
        return {
            "input_ids": input_ids[:, past_length:],
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "cache": cache,
            "use_cache": kwargs.get("use_cache"),
        }


def register() -> None:
    """Let AutoConfig / AutoModelForCausalLM load folders saved with `model_type` "chatglm6b" (safe to call again)."""
    AutoConfig.register(MODEL_TYPE, ChatGLM6BConfig, exist_ok=True)
    AutoModelForCausalLM.register(ChatGLM6BConfig, ChatGLM6BForCausalLM, exist_ok=True)


def original_state_dict(state: dict[str, Tensor], original: dict) -> dict[str, Tensor]:
    """This model's state dict as the remote code saves it: the same names, a `lm_head.weight` of its own (safetensors
    stores no aliases of the tied embedding), and each layer's persistent `rotary_emb.inv_freq` buffer in the
    weights' dtype."""
    head, embeddings = state["lm_head.weight"], state["transformer.word_embeddings.weight"]
    out = dict(state)
    if head.data_ptr() == embeddings.data_ptr():
        out["lm_head.weight"] = head.clone()
    # SelfAttention: RotaryEmbedding(head_dim // 2) with position_encoding_2d, one buffer per layer
    head_dim = original["hidden_size"] // original["num_attention_heads"]
    inv_freq = rotary_inv_freq(head_dim // 2).to(embeddings.dtype)
    for i in range(original["num_layers"]):
        out[f"transformer.layers.{i}.attention.rotary_emb.inv_freq"] = inv_freq.clone()
    return out
