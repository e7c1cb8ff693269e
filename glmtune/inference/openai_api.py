"""The OpenAI chat-completions request, validated, and its messages as a glmtune conversation.

Validation is strict where a silent guess would change the answer (unknown fields, n > 1, images, unknown roles) and
every problem is an `ApiError`: an OpenAI-style JSON error body with a 4xx status naming the field.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glmtune.families import Message, RenderOptions, ToolCall


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FunctionCall(_Strict):
    name: str
    arguments: str  # a JSON object, as the OpenAI API sends it


class CallEntry(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[CallEntry] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class Function(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: Function


class ThinkingOptions(_Strict):
    enable_thinking: bool | None = None
    clear_thinking: bool | None = None


class ChatRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: Literal[1] = 1
    user: str | None = None
    chat_template_kwargs: ThinkingOptions | None = None


def parse_request(body: bytes, model_id: str) -> ChatRequest:
    """The request body as a `ChatRequest`, or an ApiError naming what is wrong."""
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        chat = ChatRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ApiError(
            400, f"{where}: {first['msg']} ({exc.error_count()} problem(s))", param=where
        ) from None
    if chat.model != model_id:
        raise ApiError(
            404,
            f"model {chat.model!r} does not exist; this server serves {model_id!r}",
            "not_found_error",
            param="model",
            code="model_not_found",
        )
    if chat.tool_choice not in (None, "auto", "none"):
        raise ApiError(
            400,
            "tool_choice: only 'auto' and 'none' are supported (no constrained decoding)",
            param="tool_choice",
        )
    return chat


def to_conversation(chat: ChatRequest) -> list[Message]:
    """The request's messages as glmtune messages (tool results are observations, developer is system)."""
    messages = []
    for index, message in enumerate(chat.messages):
        role = {"developer": "system", "tool": "observation"}.get(message.role, message.role)
        calls = tuple(
            ToolCall(
                call.function.name,
                _arguments(
                    call.function.arguments, f"messages.{index}.tool_calls.{number}.function.arguments"
                ),
            )
            for number, call in enumerate(message.tool_calls or ())
        )
        if calls and role != "assistant":
            raise ApiError(
                400,
                f"messages.{index}.tool_calls: only assistant messages carry tool calls",
                param=f"messages.{index}.tool_calls",
            )
        messages.append(
            Message(
                role, _text(message.content), reasoning_content=message.reasoning_content, tool_calls=calls
            )
        )
    if messages[-1].role == "assistant":
        raise ApiError(
            400,
            "messages: the last message must be from the user or a tool, not the assistant",
            param="messages",
        )
    return messages


def render_options(chat: ChatRequest) -> RenderOptions:
    """The tools (none with tool_choice "none") and the thinking switches of `chat_template_kwargs`."""
    tools = (
        ()
        if chat.tool_choice == "none"
        else tuple(tool.model_dump(exclude_none=True) for tool in chat.tools or ())
    )
    kwargs = chat.chat_template_kwargs
    options = RenderOptions(tools=tools)
    if kwargs is not None and kwargs.enable_thinking is not None:
        options = replace(options, enable_thinking=kwargs.enable_thinking)
    if kwargs is not None and kwargs.clear_thinking is not None:
        options = replace(options, clear_thinking=kwargs.clear_thinking)
    return options


def _text(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _arguments(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"{where}: not valid JSON ({exc})", param=where) from None
    if not isinstance(value, dict):
        raise ApiError(400, f"{where}: must be a JSON object", param=where)
    return value
