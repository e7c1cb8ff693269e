"""`glmtune serve`: an OpenAI-compatible chat API (FastAPI + uvicorn) over a run directory or an exported model.

`GET /v1/models` and `POST /v1/chat/completions` (plain and `stream: true` server-sent events ending with
`data: [DONE]`). Prompts are rendered by the family's renderer and generation stops on its stop tokens, exactly as
`glmtune chat` does, so a greedy answer here equals `glmtune chat --query`. Every bad request gets an OpenAI-style
JSON error with a 4xx status and the server keeps serving. It binds to 127.0.0.1 unless told otherwise; with an API
key every request needs `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from glmtune.data.render import Rendered
from glmtune.errors import UsageError
from glmtune.inference.engine import Completion, Engine, Sampling
from glmtune.inference.generation import Reply
from glmtune.inference.openai_api import ApiError, ChatRequest, parse_request, render_options, to_conversation


def create_app(
    engine: Engine, model_id: str, api_key: str | None = None, defaults: dict[str, Any] | None = None
):
    """The FastAPI application serving `engine` under the name `model_id`."""
    app = FastAPI(title="glmtune serve", docs_url=None, redoc_url=None)
    _answer_errors(app)
    if api_key is not None:
        _require_key(app, api_key)
    _add_routes(app, engine, model_id, defaults or {})
    return app


def _answer_errors(app: FastAPI) -> None:
    """Every error, ours or FastAPI's, as an OpenAI-style JSON body with its status."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            ApiError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        return JSONResponse(ApiError(400, str(exc)).body(), status_code=400)


def _require_key(app: FastAPI, api_key: str) -> None:
    """Every request must carry `Authorization: Bearer KEY` (compared in constant time)."""

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            error = ApiError(
                401, "missing or wrong API key: send Authorization: Bearer KEY", "authentication_error"
            )
            return JSONResponse(error.body(), status_code=401)
        return await call_next(request)


def _add_routes(app: FastAPI, engine: Engine, model_id: str, defaults: dict[str, Any]) -> None:
    """`GET /v1/models[/NAME]` and `POST /v1/chat/completions`."""

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(model_id)]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        if name != model_id:
            raise ApiError(
                404, f"model {name!r} does not exist; this server serves {model_id!r}", "not_found_error"
            )
        return _model_card(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        chat = parse_request(await request.body(), model_id)
        prompt, sampling = _prepare(engine, chat, defaults)
        if chat.stream:
            return StreamingResponse(
                _stream(engine, chat, prompt, sampling, model_id), media_type="text/event-stream"
            )
        done = await asyncio.to_thread(engine.generate, prompt.ids, sampling)
        return _response(engine, chat, prompt, done, model_id)


def _model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "glmtune"}


def _prepare(engine: Engine, chat: ChatRequest, defaults: dict[str, Any]) -> tuple[Rendered, Sampling]:
    messages = to_conversation(chat)
    try:
        rendered = engine.prompt(messages, render_options(chat))
    except UsageError as exc:
        raise ApiError(400, f"messages: {exc}", param="messages") from None
    prompt = rendered.ids
    budget = (
        chat.max_completion_tokens
        or chat.max_tokens
        or defaults.get("max_new_tokens")
        or engine.default_max_new_tokens
    )
    if len(prompt) + 1 > engine.context_length:
        raise ApiError(
            400,
            f"the prompt is {len(prompt)} tokens; this model's context is {engine.context_length} tokens",
            code="context_length_exceeded",
            param="messages",
        )
    budget = min(budget, engine.context_length - len(prompt))
    stop = (chat.stop,) if isinstance(chat.stop, str) else tuple(chat.stop or ())
    sampling = Sampling(budget, chat.temperature, chat.top_p, stop, chat.seed, defaults)
    return rendered, sampling


def _response(
    engine: Engine, chat: ChatRequest, prompt: Rendered, done: Completion, model_id: str
) -> dict[str, Any]:
    message, finish = _message(engine, chat, prompt, done)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(len(prompt.ids), done.completion_tokens),
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _message(
    engine: Engine, chat: ChatRequest, prompt: Rendered, done: Completion
) -> tuple[dict[str, Any], str]:
    """The assistant message of a finished generation, split by the family's reply format."""
    return openai_message(engine.reply(prompt, done.text, render_options(chat).tools), done.finish_reason)


def openai_message(reply: Reply, finish_reason: str) -> tuple[dict[str, Any], str]:
    """A reply as an OpenAI assistant message (arguments as JSON text) and its finish reason."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.reasoning_content:
        message["reasoning_content"] = reply.reasoning_content
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
            }
            for call in reply.tool_calls
        ]
        message["content"] = reply.content or None
    return message, "tool_calls" if reply.tool_calls else finish_reason


async def _stream(
    engine: Engine, chat: ChatRequest, prompt: Rendered, sampling: Sampling, model_id: str
) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content/reasoning deltas as they are generated, the tool calls and the
    finish reason once the answer is complete, usage if asked for, then [DONE]."""
    chunks = _Chunks(model_id)
    pieces = _generate_in_background(engine, prompt, sampling)
    yield chunks.delta({"role": "assistant", "content": ""})
    text, sent = "", {"content": "", "reasoning_content": ""}
    while isinstance(item := await pieces.get(), str):
        text += item
        for delta in _partial_deltas(engine, prompt, text, sent):
            yield chunks.delta(delta)
    if isinstance(item, BaseException):
        yield _event(ApiError(500, f"generation failed: {item}", "server_error").body())
    else:
        for event in _closing_chunks(engine, chat, prompt, item, sent, chunks):
            yield event
    yield "data: [DONE]\n\n"


class _Chunks:
    """The chunk events of one streamed completion, which share one id."""

    def __init__(self, model_id: str) -> None:
        self.base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "model": model_id,
        }

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _event({**self.base, "created": int(time.time()), "choices": [choice]})

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        usage = _usage(prompt_tokens, completion_tokens)
        return _event({**self.base, "created": int(time.time()), "choices": [], "usage": usage})


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _generate_in_background(
    engine: Engine, prompt: Rendered, sampling: Sampling
) -> asyncio.Queue[str | Completion | BaseException]:
    """Generate in a thread that hands each new piece of text, then the completion (or the exception that ended
    it, reported to the client as an error event while the server keeps serving), to the returned queue."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()

    def hand_over(item: str | Completion | BaseException) -> None:
        loop.call_soon_threadsafe(pieces.put_nowait, item)

    def work() -> None:
        try:
            hand_over(engine.generate(prompt.ids, sampling, on_text=hand_over))
        except BaseException as exc:
            hand_over(exc)

    threading.Thread(target=work, daemon=True).start()
    return pieces


def _closing_chunks(
    engine: Engine,
    chat: ChatRequest,
    prompt: Rendered,
    done: Completion,
    sent: dict[str, str],
    chunks: _Chunks,
) -> list[str]:
    """Once the answer is complete: what the partial deltas did not send yet, the tool calls, the finish reason,
    and the usage when the request asked for it."""
    message, finish = _message(engine, chat, prompt, done)
    events = []
    for key in ("reasoning_content", "content"):
        final = message.get(key) or ""
        if final.startswith(sent[key]) and len(final) > len(sent[key]):
            events.append(chunks.delta({key: final[len(sent[key]) :]}))
    if "tool_calls" in message:
        calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        events.append(chunks.delta({"tool_calls": calls}))
    events.append(chunks.delta({}, finish))
    if chat.stream_options and chat.stream_options.get("include_usage"):
        events.append(chunks.usage(len(prompt.ids), done.completion_tokens))
    return events


def _partial_deltas(
    engine: Engine, prompt: Rendered, text: str, sent: dict[str, str]
) -> list[dict[str, str]]:
    """Deltas of the reasoning and the answer of the text so far, as far as the family's format can tell them
    apart before the reply is complete; tool calls come with the last chunk."""
    content, reasoning = engine.reply_so_far(prompt, text)
    deltas = []
    for key, value in (("reasoning_content", reasoning), ("content", content)):
        if value.startswith(sent[key]) and len(value) > len(sent[key]):
            deltas.append({key: value[len(sent[key]) :]})
            sent[key] = value
    return deltas


def serve(
    source: Path, *, host: str, port: int, api_key: str | None, engine: str, model_name: str | None
) -> None:
    """Load the model and serve it until interrupted (`engine` "auto" and "transformers" run here; "vllm" hands
    an exported folder to vLLM's own OpenAI server)."""
    from glmtune.checkpoints.load import load_for_inference
    from glmtune.console import quiet_libraries, term
    from glmtune.inference.chat import generation_settings

    if engine == "vllm":
        from glmtune.inference.vllm import run_vllm

        run_vllm(source, host=host, port=port, api_key=api_key, model_name=model_name)
        return
    quiet_libraries()
    loaded = load_for_inference(source)
    defaults = generation_settings(loaded, None, None)
    model_id = model_name or source.resolve().name
    app = create_app(Engine(loaded), model_id, api_key, defaults)
    import uvicorn

    term.ok(f"serving {source} as {model_id!r} on http://{host}:{port}/v1 (OpenAI API; Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
