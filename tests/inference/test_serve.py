"""`glmtune serve` through the official `openai` client against a real server in a subprocess on a free port."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import cli_server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

KEY = "test-key"
QUESTIONS = [
    "你是谁？",
    "Who are you?",
    "What can you do?",
    "你好",
    "Tell me a joke.",
    "1+1=?",
    "再见",
    "Thanks!",
]


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    auth = {"Authorization": f"Bearer {KEY}"}
    with cli_server(["serve", str(tiny_dir), "--api-key", KEY], "/v1/models", log, auth) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def _ask(client, tiny_dir, question: str, **kwargs):
    return client.chat.completions.create(
        model=Path(tiny_dir).name, messages=[{"role": "user", "content": question}], **kwargs
    )


def test_models_lists_the_served_folder(client, tiny_dir):
    assert [m.id for m in client.models.list().data] == [Path(tiny_dir).name]


def test_greedy_answer_equals_chat_query(client, tiny_dir):
    reply = _ask(client, tiny_dir, "你是谁？", max_tokens=12, temperature=0)
    chat = subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "chat", str(tiny_dir), "--query", "你是谁？", "--max-new-tokens", "12"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert reply.choices[0].message.content == chat.stdout.rstrip("\n")
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_length_limit_sets_finish_reason(client, tiny_dir):
    reply = _ask(client, tiny_dir, "Who are you?", max_tokens=3, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason in ("length", "stop")
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 3


def test_stream_equals_the_whole_answer(client, tiny_dir):
    whole = _ask(client, tiny_dir, "What can you do?", max_tokens=16, temperature=0)
    chunks = list(_ask(client, tiny_dir, "What can you do?", max_tokens=16, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stream_ends_with_done(server, tiny_dir):
    body = {
        "model": Path(tiny_dir).name,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_stop_string_cuts_the_answer(client, tiny_dir):
    whole = _ask(client, tiny_dir, "Tell me a joke.", max_tokens=20, temperature=0).choices[0].message.content
    if len(whole) < 4:
        pytest.skip("the tiny model's answer is too short to cut")
    stop = whole[2:4]
    cut = _ask(client, tiny_dir, "Tell me a joke.", max_tokens=20, temperature=0, stop=[stop]).choices[0]
    assert cut.message.content == whole[: whole.index(stop)] and cut.finish_reason == "stop"


def test_seeded_sampling_repeats(client, tiny_dir):
    first = _ask(client, tiny_dir, "你好", max_tokens=10, temperature=1.0, seed=7).choices[0].message.content
    again = _ask(client, tiny_dir, "你好", max_tokens=10, temperature=1.0, seed=7).choices[0].message.content
    assert first == again


def test_eight_concurrent_clients_get_their_own_answers(client, tiny_dir):
    alone = {
        q: _ask(client, tiny_dir, q, max_tokens=8, temperature=0).choices[0].message.content
        for q in QUESTIONS
    }
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: _ask(client, tiny_dir, q, max_tokens=8, temperature=0), QUESTIONS))
    assert [r.choices[0].message.content for r in together] == [alone[q] for q in QUESTIONS]


def _post(server, body, key=KEY, raw: bytes | None = None):
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{server}/v1/chat/completions", content=content, headers=headers, timeout=60)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (None, 400, "not valid JSON"),
        ({"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
        ({"model": "MODEL", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        ({"model": "MODEL", "messages": "hi"}, 400, "messages"),
        ({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400, "max_tokens"),
        ({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 400, "temperature"),
        ({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
        ({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "bogus": 1}, 400, "bogus"),
        ({"model": "MODEL", "messages": []}, 400, "messages"),
        ({"model": "MODEL", "messages": [{"role": "user", "content": "hi " * 3000}]}, 400, "context"),
        (
            {"model": "MODEL", "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{not json"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ]},
            400, "arguments",
        ),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(server, tiny_dir, body, status, needle):
    if body is not None:
        body = json.loads(json.dumps(body).replace('"MODEL"', json.dumps(Path(tiny_dir).name)))
    response = _post(server, body, raw=b"{oops" if body is None else None)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"] and error["type"]
    # and the server keeps serving
    assert (
        _post(
            server,
            {"model": Path(tiny_dir).name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        ).status_code
        == 200
    )


def test_api_key_is_required(server, tiny_dir):
    body = {"model": Path(tiny_dir).name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert _post(server, body, key=None).status_code == 401
    assert _post(server, body, key="wrong").status_code == 401
    assert httpx.get(f"{server}/v1/models").status_code == 401


def test_unknown_path_is_a_json_404(server):
    response = httpx.get(f"{server}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404 and "error" in response.json()


def test_vllm_engine_prints_the_command_without_vllm(tiny_dir):
    result = subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "serve", str(tiny_dir), "--engine", "vllm", "--port", "8123"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        "vllm serve" in result.stderr and "--port 8123" in result.stderr and "Traceback" not in result.stderr
    )
