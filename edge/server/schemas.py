"""Request bodies of the HTTP API (pydantic) and the error body, so /openapi.json is the contract.

Ranges come from the workloads' request modules (edge/chat/request.py, edge/image/request.py,
edge/segment/request.py), whose check() runs once, in the Runtime: the schema documents the ranges,
the checks word the errors. Unknown fields are ignored (OpenAI clients send fields edge-run does not use).
Numbers must be finite: NaN and infinities are refused with a 400 naming the field; true / false are
not numbers (JSON Schema keeps booleans and numbers apart, pydantic's lax mode would read true as 1).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from edge.chat import request as chat_limits
from edge.chat import tools as TOOLS
from edge.image import request as IMG
from edge.registry.hub import HUB_REF

MODEL_ID = r"^[a-z0-9][a-z0-9._-]*$"
CHAT_MODEL = rf"^(?:[a-z0-9][a-z0-9._-]*|{HUB_REF})$"
"""A chat model: an id, or a hub GGUF name hf.co/OWNER/REPO[:QUANT|:FILE] (pulled with `edge-run pull NAME`)."""
KEEP_ALIVE = (-1.0, 10_000_000.0)
"""Seconds (-1 = keep loaded forever); ~115 days is the largest finite value accepted."""


def _mentions(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """True when ``annotation`` (with its Optional / Union / Annotated / list arguments) names one of ``kinds``."""
    return annotation in kinds or any(_mentions(a, kinds) for a in get_args(annotation))


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A JSON true / false where a number belongs is refused (pydantic would read it as 1 / 0)."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if _mentions(annotation, (int, float)) and not _mentions(annotation, (bool,)):
                raise ValueError(f"must be a number, not {str(value).lower()}")
        return value


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape, used for every 4xx/5xx answer."""

    error: ErrorDetail


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _err("Invalid request: a field out of range, malformed JSON, an unusable schema (`param` names it)."),
    401: _err("Missing or wrong API key (only when the server runs with an API key)."),
    403: _err("Host header not served (DNS-rebinding guard; see `--allow-host`)."),
    404: _err("Unknown model, or the model is not installed (`edge-run pull ID`)."),
    413: _err("Body, image or list larger than accepted (checked before parsing or decoding)."),
    499: _err("The job was cancelled (client gone, or the server shutting down)."),
    500: _err("Internal error or a model that could not be loaded; details only in the server log."),
    503: _err("The scheduler's queue is full; retry after the `Retry-After` header's seconds."),
    507: _err("The model does not fit the RAM budget."),
}
"""Documented on every API route (the app never answers 422: validation errors are 400s)."""


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = ""
    tool_calls: list[dict[str, Any]] | None = Field(
        None, description="An assistant turn's calls, as answered: [{id, type: \"function\", function: {name, "
                          "arguments}}] (arguments: a JSON object as a string)")
    tool_call_id: str | None = Field(None, description="A tool turn: the id of the call it answers")


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(json_schema_extra={"pattern": TOOLS.NAME.pattern})
    description: str | None = Field(None, json_schema_extra={"maxLength": TOOLS.MAX_DESCRIPTION_CHARS})
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema of the arguments (it must become "
                                                                "a grammar: see `response_format`)")
    strict: StrictBool | None = None


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: FunctionSpec


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


L = chat_limits


def Range(default: Any, lo: float, hi: float, description: str | None = None) -> Any:
    """A field whose range is documented in OpenAPI (minimum/maximum) and enforced by the workload's own
    check at the door, so every range error has the same words: "`x` must be between lo and hi, got v."."""
    return Field(default, description=description, json_schema_extra={"minimum": lo, "maximum": hi})


class SamplingFields(_Body):
    model: Annotated[str, Field(pattern=CHAT_MODEL, max_length=320)] | None = None
    stream: StrictBool = False  # strict: 0 / "yes" are refused, not read as booleans
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Range(None, *L.MAX_TOKENS)
    max_completion_tokens: int | None = Range(None, *L.MAX_TOKENS)
    temperature: float | None = Range(None, *L.TEMPERATURE, "Default: the model's recommended value, else 0.8")
    top_p: float | None = Range(None, *L.TOP_P, "Default: the model's recommended value, else 0.95")
    top_k: int | None = Range(None, *L.TOP_K, "0 = off. Default: the model's recommended value, else 40")
    min_p: float | None = Range(None, *L.MIN_P, "Default: the model's recommended value, else 0.05")
    seed: int | None = Range(None, *L.SEED, "Default: a random seed, reported in `system_fingerprint` "
                             "(edge-run-VERSION-seed-SEED)")
    stop: Union[Annotated[str, Field(max_length=L.MAX_STOP_CHARS)],
                Annotated[list[Annotated[str, Field(max_length=L.MAX_STOP_CHARS)]], Field(max_length=L.MAX_STOP)],
                None] = None
    n: int = Range(1, 1, 1, "Only 1: send several requests for several answers.")
    keep_alive: float | None = Range(None, *KEEP_ALIVE, "Seconds the model stays loaded after this job (-1 = "
                                     "forever); Ollama-style extension.")
    repeat_penalty: float | None = Range(None, *L.REPEAT_PENALTY, "1.0 = off. Default: the model's recommended "
                                         "value, else 1.0")


class ChatCompletionBody(SamplingFields):
    messages: list[Message] = Field(json_schema_extra={"minItems": 1, "maxItems": L.MAX_MESSAGES})
    response_format: ResponseFormat | None = None
    tools: list[ToolSpec] | None = Field(None, json_schema_extra={"maxItems": TOOLS.MAX_TOOLS})
    tool_choice: str | dict[str, Any] | None = Field(
        None, description="\"auto\" (default with tools), \"none\", \"required\", or {\"type\": \"function\", "
                          "\"function\": {\"name\": ...}}")
    parallel_tool_calls: StrictBool | None = Field(None, description="Accepted; a required call is one call")


class CompletionBody(SamplingFields):
    prompt: str = Field(json_schema_extra={"minLength": 1, "maxLength": L.MAX_PROMPT_CHARS})


class ImageGenerationBody(_Body):
    """OpenAI's images API body plus edge-run's LCM fields (steps, seed, guidance_scale, decoder)."""

    prompt: str = Field(json_schema_extra={"minLength": 1, "maxLength": IMG.MAX_PROMPT_CHARS})
    n: int = Range(1, 1, IMG.MAX_N)
    size: Annotated[str, Field(pattern=r"^[0-9]{1,5}(x[0-9]{1,5})?$")] | None = Field(
        None, description=f"WIDTHxHEIGHT, multiples of 8 from {IMG.MIN_SIDE} to {IMG.MAX_SIDE}; default: the model's")
    response_format: Literal["b64_json"] | None = "b64_json"
    model: Annotated[str, Field(pattern=MODEL_ID, max_length=128)] | None = None
    steps: int = Range(4, 1, IMG.MAX_STEPS, "LCM models need few steps")
    seed: int | None = Range(None, 0, IMG.SEED_LIMIT - 1)
    guidance_scale: float = Range(8.0, *IMG.GUIDANCE_SCALE)
    decoder: Literal["vae", "taesd"] | None = None
