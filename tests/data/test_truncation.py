"""Truncation that keeps the task: history goes first, then the longest prompt text is shortened (middle or end),
the answer's end last; no user turn is emptied, every answer keeps its terminator, and prepare counts each change."""

import json
import re

import pytest
from conftest import write_recipe

from glmtune.data.prepare import prepare_data
from glmtune.data.render import ELISION, render_conversation, render_sample
from glmtune.families import Message
from glmtune.recipe_files import load_recipe

LONG_INPUT = "".join(f"第{i}句是一段很长的材料，" for i in range(120))
QUESTION = "请用一句话总结上面的内容。"


def user_turns(ids, tokenizer) -> list[str]:
    text = tokenizer.decode(ids)
    return re.findall(r"<\|user\|>(.*?)<\|assistant\|>", text, flags=re.S)


def test_middle_cut_keeps_the_head_and_the_question_at_the_end(tokenizer, glm4):
    messages = [Message("user", LONG_INPUT + QUESTION), Message("assistant", "这是一段总结。")]
    sample = render_sample(messages, glm4, tokenizer, max_length=96, overlong="truncate", cut="middle")
    (user,) = user_turns(sample.ids, tokenizer)
    assert sample.status == "truncated" and sample.changes == ("prompt cut (middle)",)
    assert len(sample.ids) <= 96 and user.strip().startswith("第0句") and user.endswith(QUESTION)
    assert ELISION in user
    assert tokenizer.decode(sample.ids).endswith("这是一段总结。<|user|>") and sample.mask[-1]


def test_end_cut_keeps_the_head_only(tokenizer, glm4):
    messages = [Message("user", LONG_INPUT + QUESTION), Message("assistant", "好的。")]
    sample = render_sample(messages, glm4, tokenizer, max_length=96, overlong="truncate", cut="end")
    (user,) = user_turns(sample.ids, tokenizer)
    assert (
        sample.changes == ("prompt cut (end)",) and QUESTION not in user and user.strip().startswith("第0句")
    )


def test_a_long_system_prompt_is_cut_before_the_short_question(tokenizer, glm4):
    messages = [Message("system", LONG_INPUT), Message("user", QUESTION), Message("assistant", "好的。")]
    sample = render_sample(messages, glm4, tokenizer, max_length=80, overlong="truncate")
    assert len(sample.ids) <= 80 and user_turns(sample.ids, tokenizer) == ["\n" + QUESTION]


def test_history_goes_first_and_is_reported(tokenizer, glm4):
    messages = [Message("user", LONG_INPUT), Message("assistant", "旧回答。"), Message("user", QUESTION),
                Message("assistant", "新回答。")]  # fmt: skip
    sample = render_sample(messages, glm4, tokenizer, max_length=40, overlong="truncate")
    assert sample.changes == ("history dropped",) and "第0句" not in tokenizer.decode(sample.ids)


def test_a_long_answer_is_cut_at_its_end_after_the_prompt_reached_its_floor(tokenizer, glm4):
    messages = [Message("user", LONG_INPUT), Message("assistant", LONG_INPUT)]
    sample = render_sample(messages, glm4, tokenizer, max_length=64, overlong="truncate")
    assert sample.changes == ("prompt cut (middle)", "answer end cut") and len(sample.ids) <= 64
    assert user_turns(sample.ids, tokenizer)[0].strip() and sample.mask[-1]
    assert sample.ids[-1] == tokenizer.convert_tokens_to_ids("<|user|>")


@pytest.mark.parametrize("max_length", [24, 48, 96, 160])
@pytest.mark.parametrize("cut", ["middle", "end"])
def test_no_overlong_sample_ends_with_an_empty_user_turn(tokenizer, glm4, max_length, cut):
    # alpaca_zh-shaped: instruction + a long input, answers of every length
    for size in (10, 40, 80, 160):
        messages = [
            Message("user", "阅读材料并回答。\n" + LONG_INPUT[: size * 4]),
            Message("assistant", "答" * size),
        ]
        sample = render_sample(messages, glm4, tokenizer, max_length=max_length, overlong="truncate", cut=cut)
        if sample.status == "dropped":
            continue
        assert len(sample.ids) <= max_length and all(
            turn.strip() for turn in user_turns(sample.ids, tokenizer)
        )
        assert sample.ids[-1] == tokenizer.convert_tokens_to_ids("<|user|>") and sample.mask[-1]


def test_the_mask_still_comes_from_render_conversation(tokenizer, glm4):
    messages = [Message("user", LONG_INPUT), Message("assistant", "好的。")]
    sample = render_sample(messages, glm4, tokenizer, max_length=64, overlong="truncate")
    text = tokenizer.decode(sample.ids)
    prompt = text[: text.index("<|assistant|>")]
    again = render_conversation([Message("user", prompt.split("<|user|>", 1)[1].lstrip("\n")),
                                 Message("assistant", "好的。")], glm4, tokenizer)  # fmt: skip
    assert sum(again.mask) == sum(sample.mask)


def test_prepare_counts_each_kind_of_change(tmp_path, tokenizer, glm4):
    records = [
        {"instruction": "总结。", "input": LONG_INPUT, "output": "好的。"},
        {"instruction": "Go on.", "output": LONG_INPUT},
        {"instruction": "短问题", "output": "短回答", "history": [[LONG_INPUT, "旧回答"]]},
        {"instruction": "你好", "output": "你好！"},
    ]
    (tmp_path / "long.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8"
    )
    body = '[model]\npath = "builtin:tiny-glm4"\n[data]\ntrain = ["long.jsonl"]\nmax_length = 64\n'
    recipe = load_recipe(write_recipe(tmp_path, body))
    stats = prepare_data(recipe.data, glm4, tokenizer, tmp_path / "prepared").stats["train"]
    assert stats["truncated"] == 3 and stats["dropped"] == 0
    assert stats["truncated: history dropped"] == 1
    assert stats["truncated: prompt cut (middle)"] == 1
    assert stats["truncated: answer end cut"] == 1
    dropped = load_recipe(write_recipe(tmp_path, body + 'overlong = "drop"\n'))
    assert prepare_data(dropped.data, glm4, tokenizer, tmp_path / "dropped").stats["train"]["dropped"] == 3
