"""The native ChatGLM-6B (v1) port against the original remote code's rules and math.

`reference_*` below is a pure-torch forward written from THUDM/chatglm-6b's `modeling_chatglm.py` in the original's
own conventions ([seq, batch, ...] tensors, the fp16-rounded inv_freq cache looked up with F.embedding, the
per-head qkv split, baddbmm with the layer-scaled query, `seq.index` for the masks and positions), reading the
original-layout state dict directly, so it shares no code with `glmtune.families.modeling_chatglm6b`. Inference only, no cache.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_ASSETS
from original_fixtures import tiny_chatglm6b_checkpoint
from torch import Tensor
from transformers import AutoModelForCausalLM

from glmtune.errors import UsageError
from glmtune.families.modeling_chatglm6b import (
    CACHE_NAME,
    ORIGINAL_FIELDS,
    ChatGLM6BConfig,
    ChatGLM6BForCausalLM,
    position_ids_2d,
    prefix_lm_mask,
    register,
)

MASK, GMASK, SOP, PAD = 130000, 130001, 130004, 3
PROMPT = [5, 6, 7, GMASK, SOP, 8, 9]
PROMPT_WITH_MASK = [5, MASK, 6, 7, SOP, 8, 9]  # [MASK] mid-context, as in blank infilling


def reference_masks(input_ids: Tensor, bos: int) -> Tensor:
    """get_masks: True where attention is blocked."""
    batch, seq = input_ids.shape
    context_lengths = [row.tolist().index(bos) for row in input_ids]
    allowed = torch.ones(batch, seq, seq).tril()
    for i, context_length in enumerate(context_lengths):
        allowed[i, :, :context_length] = 1
    return (allowed.unsqueeze(1) < 0.5).bool()


def reference_position_ids(input_ids: Tensor, bos: int) -> Tensor:
    """ChatGLMModel.forward's mask lookup + get_position_ids with position_encoding_2d."""
    batch, seq = input_ids.shape
    rows = input_ids.tolist()
    mask_positions = [row.index(GMASK if GMASK in row else MASK) for row in rows]
    context_lengths = [row.index(bos) for row in rows]
    position_ids = torch.arange(seq).unsqueeze(0).repeat(batch, 1)
    for i, context_length in enumerate(context_lengths):
        position_ids[i, context_length:] = mask_positions[i]
    blocks = [
        torch.cat((torch.zeros(c, dtype=torch.long), torch.arange(seq - c) + 1)) for c in context_lengths
    ]
    return torch.stack((position_ids, torch.stack(blocks)), dim=1)


def reference_rotary(dim: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """RotaryEmbedding(dim, base=10000) of a `.float()` model: inv_freq was rounded by `.half()` at init."""
    inv_freq = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half().float()
    freqs = torch.einsum("i,j->ij", torch.arange(seq_len, dtype=inv_freq.dtype), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[:, None, :], emb.sin()[:, None, :]


def reference_rotate(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, position_id: Tensor):
    """apply_rotary_pos_emb_index; position_id: [sq, b], q/k: [sq, b, np, hn]."""

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=x1.ndim - 1)

    cos = F.embedding(position_id, cos.squeeze(1)).unsqueeze(2)
    sin = F.embedding(position_id, sin.squeeze(1)).unsqueeze(2)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def reference_attention(
    x: Tensor, sd: dict, p: str, heads: int, position_ids: Tensor, mask: Tensor, layer_id: int
):
    """SelfAttention.forward + attention_fn on x [sq, b, h]."""
    hn = x.shape[-1] // heads
    mixed = F.linear(x, sd[p + "query_key_value.weight"], sd[p + "query_key_value.bias"])
    q, k, v = torch.split(mixed.view(*mixed.shape[:-1], heads, 3 * hn), hn, dim=-1)
    q1, q2 = q.chunk(2, dim=-1)
    k1, k2 = k.chunk(2, dim=-1)
    cos, sin = reference_rotary(hn // 2, int(position_ids.max()) + 1)
    q1, k1 = reference_rotate(q1, k1, cos, sin, position_ids[:, 0, :].transpose(0, 1))
    q2, k2 = reference_rotate(q2, k2, cos, sin, position_ids[:, 1, :].transpose(0, 1))
    q, k = torch.cat([q1, q2], dim=-1), torch.cat([k1, k2], dim=-1)
    coeff = float(layer_id + 1)
    q = q / (math.sqrt(hn) * coeff)
    sq, b, sk = q.size(0), q.size(1), k.size(0)
    scores = torch.baddbmm(
        torch.zeros(b * heads, sq, sk),
        q.reshape(sq, b * heads, hn).transpose(0, 1),
        k.reshape(sk, b * heads, hn).transpose(0, 1).transpose(1, 2),
        beta=0.0,
        alpha=1.0,
    ).view(b, heads, sq, sk)
    scores = scores.masked_fill(mask, -10000.0).float() * coeff
    probs = F.softmax(scores, dim=-1).view(b * heads, sq, sk)
    context = torch.bmm(probs, v.reshape(sk, b * heads, hn).transpose(0, 1))
    context = context.view(b, heads, sq, hn).permute(2, 0, 1, 3).reshape(sq, b, heads * hn)
    return F.linear(context, sd[p + "dense.weight"], sd[p + "dense.bias"])


def reference_block(h: Tensor, sd: dict, cfg: dict, i: int, position_ids: Tensor, mask: Tensor) -> Tensor:
    """GLMBlock.forward (num_layers keeps its default 28) on h [sq, b, h]."""
    p, eps, alpha = f"transformer.layers.{i}.", cfg["layernorm_epsilon"], (2 * 28) ** 0.5

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[p + name + ".weight"], sd[p + name + ".bias"], eps)

    attention_input = norm(h, "input_layernorm")
    heads = cfg["num_attention_heads"]
    attention_output = reference_attention(
        attention_input, sd, p + "attention.", heads, position_ids, mask, i
    )
    h = attention_input * alpha + attention_output
    mlp_input = norm(h, "post_attention_layernorm")
    x = F.linear(mlp_input, sd[p + "mlp.dense_h_to_4h.weight"], sd[p + "mlp.dense_h_to_4h.bias"])
    x = 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))
    return mlp_input * alpha + F.linear(
        x, sd[p + "mlp.dense_4h_to_h.weight"], sd[p + "mlp.dense_4h_to_h.bias"]
    )


def reference_logits(input_ids: Tensor, sd: dict, cfg: dict) -> Tensor:
    mask, position_ids = reference_masks(input_ids, SOP), reference_position_ids(input_ids, SOP)
    h = F.embedding(input_ids, sd["transformer.word_embeddings.weight"]).transpose(0, 1)
    for i in range(cfg["num_layers"]):
        h = reference_block(h, sd, cfg, i, position_ids, mask)
    w, b = sd["transformer.final_layernorm.weight"], sd["transformer.final_layernorm.bias"]
    h = F.layer_norm(h, h.shape[-1:], w, b, cfg["layernorm_epsilon"])
    return F.linear(h, sd["lm_head.weight"]).permute(1, 0, 2)


@pytest.fixture(scope="module")
def checkpoint() -> tuple[dict, dict[str, Tensor]]:
    return tiny_chatglm6b_checkpoint(seed=0)


@pytest.fixture(scope="module")
def model(checkpoint) -> ChatGLM6BForCausalLM:
    original, state = checkpoint
    model = ChatGLM6BForCausalLM(ChatGLM6BConfig.from_original(original))
    model.load_state_dict(state, strict=True)  # by name, no conversion
    return model.eval()


def batch(*rows: list[int]) -> Tensor:
    return torch.tensor(rows)


def long_batch() -> Tensor:
    """90 context tokens, then 30 generated ones: positions up to ~90 make rotary slips show in the logits."""
    generator = torch.Generator().manual_seed(3)
    context, answer = (torch.randint(10, 1000, (2, n), generator=generator) for n in (90, 30))
    input_ids = torch.cat([context, batch([GMASK, SOP], [GMASK, SOP]), answer], dim=1)
    input_ids[1, 40], input_ids[1, 90] = MASK, 7  # row 2 blanks with [MASK] at 40, no [gMASK]
    return input_ids


def test_mask_and_positions_follow_the_original_rules():
    config = ChatGLM6BConfig()
    blocked = [  # context [5, 6, 7, gMASK] is seen by all; causal from <sop> on
        [0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 0],
    ]
    assert prefix_lm_mask(batch(PROMPT), SOP).int().tolist() == [[blocked]]
    assert position_ids_2d(batch(PROMPT), config).tolist() == [[[0, 1, 2, 3, 3, 3, 3], [0, 0, 0, 0, 1, 2, 3]]]
    # [MASK] at 1 when no [gMASK]: tokens from <sop> on sit at 1
    assert position_ids_2d(batch(PROMPT_WITH_MASK), config).tolist() == [
        [[0, 1, 2, 3, 1, 1, 1], [0, 0, 0, 0, 1, 2, 3]]
    ]
    for mixed in (batch(PROMPT, PROMPT_WITH_MASK, [GMASK, 5, SOP, 6, 7, 8, 9]), long_batch()):
        assert torch.equal(prefix_lm_mask(mixed, SOP), reference_masks(mixed, SOP))
        assert torch.equal(position_ids_2d(mixed, config), reference_position_ids(mixed, SOP))
    # left padding comes off the positions, as the original tokenizer's `_pad` (zeros on the left) gives them
    padded = position_ids_2d(batch([PAD, PAD, *PROMPT]), config, padding_mask=batch([0, 0] + [1] * 7))
    assert padded.tolist() == [[[0, 0, 0, 1, 2, 3, 3, 3, 3], [0, 0, 0, 0, 0, 0, 1, 2, 3]]]
    with pytest.raises(ValueError, match="<sop>"):
        position_ids_2d(batch([5, 6, GMASK, 7]), config)


def test_config_from_the_official_config_json():
    path = SHARED_ASSETS / "chatglm-6b" / "config.json"
    if not path.is_file():
        pytest.skip(f"no {path}")
    original = json.loads(path.read_text())
    config = ChatGLM6BConfig.from_original(original)
    assert {key: getattr(config, key) for key in ORIGINAL_FIELDS} == {
        key: original[key] for key in ORIGINAL_FIELDS
    }
    assert config.model_type == "chatglm6b" and config.num_hidden_layers == 28 and config.tie_word_embeddings
    assert config.dtype == torch.float16
    for extra in ({"quantization_bit": 4}, {"pre_seq_len": 128}):
        with pytest.raises(UsageError):
            ChatGLM6BConfig.from_original(original | extra)


def test_state_dict_keys_are_the_original_parameter_names(model, checkpoint):
    _, state = checkpoint
    assert set(model.state_dict()) == set(state)
    assert {
        "transformer.layers.1.attention.query_key_value.bias",
        "transformer.final_layernorm.weight",
    } <= set(state)
    assert model.lm_head.weight is model.transformer.word_embeddings.weight


def test_one_layer_matches_the_reference(model, checkpoint):
    original, state = checkpoint
    input_ids = long_batch()
    layer = model.transformer.layers[1]  # layer_id 1: the query/key scaling coefficient is 2
    handed = {}  # the mask and rotary tables the port's forward hands its layers
    hook = layer.register_forward_pre_hook(
        lambda module, args, kwargs: handed.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        model(input_ids, use_cache=False)
    hook.remove()
    hidden = torch.randn(
        *input_ids.shape, original["hidden_size"], generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        port = layer(hidden, **handed)
    mask, position_ids = reference_masks(input_ids, SOP), reference_position_ids(input_ids, SOP)
    expected = reference_block(hidden.transpose(0, 1), state, original, 1, position_ids, mask).transpose(0, 1)
    assert torch.allclose(port, expected, atol=1e-5)


def test_logits_match_the_reference_forward(model, checkpoint):
    original, state = checkpoint
    input_ids = long_batch()
    with torch.no_grad():
        logits = model(input_ids).logits
    assert torch.allclose(logits, reference_logits(input_ids, state, original), atol=1e-5)


def test_save_and_reload_through_the_auto_classes(model, checkpoint, tmp_path):
    original, state = checkpoint
    register()
    register()  # idempotent
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "chatglm6b"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert isinstance(reloaded, ChatGLM6BForCausalLM)
    # an original checkpoint may carry the remote code's rotary buffers: ignored, as the remote code does
    buffers = {f"transformer.layers.{i}.attention.rotary_emb.inv_freq": torch.ones(8) for i in range(2)}
    direct, info = ChatGLM6BForCausalLM.from_pretrained(
        None,
        config=ChatGLM6BConfig.from_original(original),
        state_dict=state | buffers,
        dtype=torch.float32,
        output_loading_info=True,
    )
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    input_ids = batch(PROMPT)
    expected = reference_logits(input_ids, state, original)
    with torch.no_grad():
        for loaded in (reloaded, direct.eval()):
            assert torch.allclose(loaded(input_ids).logits, expected, atol=1e-5)


def greedy_without_cache(model: ChatGLM6BForCausalLM, input_ids: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Recompute the whole sequence each step (masks and positions from input_ids): the tokens and each step's logits."""
    step_logits = []
    for _ in range(steps):
        with torch.no_grad():
            step_logits.append(model(input_ids, use_cache=False).logits[:, -1])
        input_ids = torch.cat([input_ids, step_logits[-1].argmax(-1, keepdim=True)], dim=-1)
    return input_ids, torch.stack(step_logits, dim=1)


def greedy(model: ChatGLM6BForCausalLM, input_ids: Tensor, steps: int, **kwargs) -> tuple[Tensor, Tensor]:
    out = model.generate(
        input_ids,
        max_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    return out.sequences, torch.stack(out.logits, dim=1)


def test_generate_matches_a_stepwise_argmax_loop(model):
    input_ids = batch(PROMPT[:5], PROMPT_WITH_MASK[:5])
    expected, expected_logits = greedy_without_cache(model, input_ids, 5)
    for use_cache in (True, False):
        sequences, logits = greedy(model, input_ids, 5, use_cache=use_cache)
        assert sequences.tolist() == expected.tolist()
        # the logits too: a random model's argmax alone may not notice a misplaced generated token
        assert torch.allclose(logits, expected_logits, atol=1e-4)


def test_generate_feeds_only_the_new_token_once_the_cache_holds_the_prompt(model):
    fed: list[int] = []
    hook = model.transformer.word_embeddings.register_forward_hook(
        lambda _, args, out: fed.append(args[0].size(1))
    )
    try:
        greedy(model, batch(PROMPT[:5]), 3, use_cache=True)
    finally:
        hook.remove()
    assert fed == [5, 1, 1]


def test_no_cache_is_built_while_training(model):
    trained = copy.deepcopy(model).train()
    assert getattr(trained(**training_batch()), CACHE_NAME) is None
    assert getattr(trained(batch(PROMPT), use_cache=True), CACHE_NAME) is None
    with torch.no_grad():  # generating from a model in training mode keeps its cache
        assert getattr(trained(batch(PROMPT)), CACHE_NAME) is not None


def test_new_tokens_sit_at_the_mask_position_with_rising_block_positions(model):
    prompt = batch(PROMPT[:5])  # a generation prompt ends with <sop> (context length 4, [gMASK] at 3)
    with torch.no_grad():
        cache = getattr(model(prompt, use_cache=True), CACHE_NAME)
    step = model.prepare_inputs_for_generation(torch.cat([prompt, batch([11])], -1), past_key_values=cache)
    assert step["input_ids"].tolist() == [[11]]
    # the original's prepare_inputs_for_generation: [mask_position, seq_length - context_length] = [3, 6 - 4]
    assert step["position_ids"].tolist() == [[[3], [2]]]
    step = model.prepare_inputs_for_generation(torch.cat([prompt, batch([11, 12])], -1), past_key_values=None)
    assert step["position_ids"].tolist() == [[[0, 1, 2, 3, 3, 3, 3], [0, 0, 0, 0, 1, 2, 3]]]


def test_left_padded_rows_give_the_unpadded_results(model):
    short = [5, GMASK, SOP, 8]
    input_ids = batch([PAD, PAD, PAD] + short, PROMPT)
    attention_mask = batch([0, 0, 0, 1, 1, 1, 1], [1] * 7)
    with torch.no_grad():
        padded = model(input_ids, attention_mask=attention_mask).logits
        alone = model(batch(short)).logits
    assert torch.allclose(padded[0, 3:], alone[0], atol=1e-5)
    sequences, logits = greedy(model, input_ids, 4, attention_mask=attention_mask)
    for row, prompt, start in ((0, short, 3), (1, PROMPT, 0)):
        expected, expected_logits = greedy_without_cache(model, batch(prompt), 4)
        assert sequences[row, start:].tolist() == expected[0].tolist()
        assert torch.allclose(logits[row], expected_logits[0], atol=1e-4)


def training_batch() -> dict[str, Tensor]:
    input_ids = batch(PROMPT + [10, 11], PROMPT_WITH_MASK + [12, 13])
    labels = input_ids.clone()
    labels[:, :4] = -100  # the context is not supervised
    return {"input_ids": input_ids, "labels": labels}


def test_lora_on_query_key_value_trains(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"])
    )
    peft_model.train()
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in name for name in adapters)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = peft_model(**training_batch()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    params = dict(peft_model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in frozen.items())
    assert any(not torch.equal(params[n], before) for n, before in adapters.items())


def test_gradient_checkpointing_gives_the_same_gradients(model):
    grads = []
    for checkpointing in (False, True):
        trained = copy.deepcopy(model).train()
        if checkpointing:
            trained.activation_checkpointing_enable()
        trained(**training_batch()).loss.backward()
        grads.append(trained.transformer.layers[0].attention.query_key_value.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
