"""Request bodies: OpenAI's fields (the ones this server honours) plus lmlab's KV extension fields.

Unknown fields are errors rather than silently ignored: a client that sends `frequency_penalty`
or a misspelt `kv_budgt` learns at once that it did not apply (the fault of the servers the
seed-003 bench talked to). OpenAI fields we accept but cannot honour must keep their neutral
value. The extension fields may sit at the top level (what the `openai` client's `extra_body`
produces) or inside a literal `extra_body` object (what some clients send).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmlab.model.kv_policies import KV_POLICIES
from lmlab.serve.errors import bad_request, from_validation

EXTENSION_FIELDS = (
    "top_k",
    "ignore_eos",
    "kv_policy",
    "kv_budget",
    "kv_window",
    "kv_kernel",
    "kv_pooling",
    "kv_sinks",
    "kv_suffix",
)
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier")  # bookkeeping, no effect on output
MAX_STOP = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What both endpoints share: OpenAI's sampling fields and lmlab's extensions."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=64)] = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    # lmlab extensions
    top_k: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False  # vLLM's: generate max_tokens even past <|eot|> (benchmarks)
    kv_policy: str = "full"
    kv_budget: float = 1.0
    kv_window: Annotated[int, Field(ge=1)] = 32
    kv_kernel: Annotated[int, Field(ge=1)] = 7
    kv_pooling: Literal["avg", "max"] = "avg"
    kv_sinks: Annotated[int, Field(ge=0)] = 4
    kv_suffix: Annotated[int, Field(ge=0)] = 0  # last N prompt tokens prefilled after compression

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("kv_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        if v not in KV_POLICIES:
            raise ValueError(f"unknown KV policy {v!r} (choose from {', '.join(KV_POLICIES)})")
        return v

    @field_validator("kv_budget")
    @classmethod
    def _budget(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"kv_budget must be in (0, 1], got {v}")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0.0:
            raise ValueError("penalties are not supported by this server (send 0 or omit it)")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v):
        if v:
            raise ValueError("logit_bias is not supported by this server (omit it)")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    best_of: int | None = None
    suffix: None = None

    @model_validator(mode="after")
    def _best_of(self):
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported (omit it)")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids used as given."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise bad_request("prompt is empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def plain(self) -> dict:
        """The core template's {role, content}: text parts joined, `developer` read as system."""
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @model_validator(mode="after")
    def _top_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.max_tokens == 0:
            raise ValueError("max_tokens must be >= 1 for a chat completion")
        return self


def parse_body(body: Any, model: type[SamplingFields]):
    """A JSON body -> a validated request; every failure is an ApiError 400 naming the field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    body = dict(body)
    for key in IGNORED_FIELDS:
        body.pop(key, None)
    extra = body.pop("extra_body", None)
    if extra is not None:
        if not isinstance(extra, dict):
            raise bad_request("extra_body must be an object", param="extra_body")
        unknown = sorted(set(extra) - set(EXTENSION_FIELDS))
        if unknown:
            raise bad_request(
                f"extra_body: unknown extension field {unknown[0]!r} "
                f"(known: {', '.join(EXTENSION_FIELDS)})",
                param=f"extra_body.{unknown[0]}",
            )
        body.update(extra)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise from_validation(e) from None
