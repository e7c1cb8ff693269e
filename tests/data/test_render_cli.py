"""`glmtune render`: each record as the family's template renders it, one JSON object per line; text needs no
tokenizer (a folder with config + template is enough), --ids adds the tokenizer's ids; bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import SHARED_ASSETS
from release_conversations import CONVERSATIONS, openai_messages, template_text, tiny_xml_tokenizer

from glmtune.data.render import without_reasoning
from glmtune.families.base import RenderOptions

RECORDS = [n for n, (m, _) in CONVERSATIONS.items() if m[-1].role == "assistant" and m[-1].content]


def _data(tmp_path, records: list[str] = RECORDS) -> str:
    path = tmp_path / "golden.jsonl"
    lines = [json.dumps({"messages": openai_messages(CONVERSATIONS[n][0]), "tools": list(CONVERSATIONS[n][1])},
                        ensure_ascii=False) for n in records]  # fmt: skip
    path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


def _render(*args: str) -> list[dict]:
    from typer.testing import CliRunner

    from glmtune.cli import app

    result = CliRunner().invoke(app, ["render", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("folder", ["glm-4.5", "glm-4.7-flash", "glm-5.1", "glm-5.2"])
@pytest.mark.parametrize("mode", ["train", "prompt", "thinking_off"])
def test_render_equals_the_folders_own_template(tmp_path, folder, mode):
    path = SHARED_ASSETS / folder
    if not (path / "chat_template.jinja").is_file():
        pytest.skip(
            f"official GLM files not found at {path} (../shared beside the repo, or GLMTUNE_SHARED_ASSETS)"
        )
    template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    flags = {"train": [], "prompt": ["--generation-prompt"], "thinking_off": ["--enable-thinking", "false"]}[
        mode
    ]
    lines = _render(str(path), _data(tmp_path), *flags)
    assert len(lines) == len(RECORDS)
    for name, line in zip(RECORDS, lines, strict=True):
        messages, tools = CONVERSATIONS[name]
        options = RenderOptions(tools=tools, enable_thinking=mode != "thinking_off")
        if mode == "prompt":
            expected = template_text(
                template, messages[:-1], RenderOptions(add_generation_prompt=True, tools=tools)
            )
            assert (line["text"], line["trained"]) == (expected, []), name
            continue
        if mode == "thinking_off":
            messages = [without_reasoning(m) for m in messages]
        expected = template_text(template, messages, options)
        end = (
            "<|observation|>" if messages[-1].tool_calls else "<|user|>"
        )  # the trained token that ends the turn
        assert line["text"] == expected + end, name
        assert line["trained"] and line["trained"][-1].endswith(end)
        assert all(span in line["text"] for span in line["trained"])


def test_render_by_family_needs_no_tokenizer_and_imports_no_torch(tmp_path):
    code = (
        "import sys, json; from typer.testing import CliRunner; from glmtune.cli import app; "
        f"r = CliRunner().invoke(app, ['render', '--family', 'glm5_3', {_data(tmp_path)!r}]); "
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules, 'heavy import'; print(r.stdout)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout.splitlines()[0])
    assert first["text"].startswith("[gMASK]<sop><|system|>Reasoning Effort: Max<|user|>Hi<|assistant|>")
    assert first["trained"] == ["</think>Hello!<|user|>"]  # the prompt writes <think>; the model closes it


def test_render_ids_come_from_the_folders_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "model"
    tiny_xml_tokenizer().save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "glm4_moe_lite"}))
    lines = _render(str(folder), _data(tmp_path), "--family", "glm4_7", "--ids")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for line in lines:
        assert line["ids"] == tokenizer.encode(line["text"], add_special_tokens=False)
        trained = tokenizer.decode([i for i, m in zip(line["ids"], line["mask"], strict=True) if m])
        assert trained == "".join(line["trained"])


def _glmtune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glmtune.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_tool_data_for_a_family_without_tools_and_missing_arguments_exit_2(tmp_path):
    result = _glmtune("render", "--family", "chatglm2", _data(tmp_path, ["single", "parallel_calls"]))
    assert result.returncode == 2 and result.stdout == ""
    assert "golden.jsonl:" in result.stderr and "no tool format" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    result = _glmtune("render", _data(tmp_path))
    assert result.returncode == 2 and "--family NAME DATA" in result.stderr
