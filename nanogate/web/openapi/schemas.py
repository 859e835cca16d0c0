"""The OpenAPI document's components: schemas, security schemes, the error answers, and the
helpers the operations in paths.py are written with.

Request bodies allow unknown fields wherever the gateway passes them on or ignores them (Google's
snake_case spellings and newer fields, OpenAI's parameters it has no use for); answers allow them
too, since upstreams add fields over time and clients generated from this must not break.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"
SSE = "text/event-stream"
Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
ANY_OBJECT: Schema = {"type": "object"}
INT32_MAX = 2**31 - 1


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict[str, Any], *required: str, extra: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        schema["required"] = list(required)
    return schema


def arr(items: Schema, **limits: int) -> Schema:
    return {"type": "array", "items": items, **limits}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


# -- components ----------------------------------------------------------------------------------

_TOKENS = arr(obj({"modality": STR, "tokenCount": INT}))
_CONTENT = obj({"role": enum("user", "model"), "parts": arr(ref("Part"), minItems=1)}, "parts")

GEMINI_SCHEMAS: dict[str, Schema] = {
    "Part": obj(
        {
            "text": STR,
            "inlineData": obj({"mimeType": STR, "data": {**STR, "format": "byte"}}, "data"),
            "fileData": obj({"mimeType": STR, "fileUri": STR}, "fileUri"),
            "functionCall": obj({"name": STR, "args": ANY_OBJECT}),
            "functionResponse": obj({"name": STR, "response": ANY_OBJECT}),
            "thought": BOOL,
            "thoughtSignature": STR,
        }
    )
    | {"minProperties": 1},
    "Content": _CONTENT,
    # The ranges the gateway checks (dialects/gemini_validate), as Google's reference gives them.
    "GenerationConfig": obj(
        {
            "temperature": {**NUM, "minimum": 0, "maximum": 2},
            "topP": {**NUM, "minimum": 0, "maximum": 1},
            "topK": {**NUM, "minimum": 1, "maximum": INT32_MAX},
            "candidateCount": {**INT, "minimum": 1, "maximum": 8},
            "maxOutputTokens": {**INT, "minimum": 1, "maximum": INT32_MAX},
            "stopSequences": arr(STR, maxItems=5),
            "seed": {**INT, "minimum": -INT32_MAX - 1, "maximum": INT32_MAX},
            "presencePenalty": {**NUM, "minimum": -2, "maximum": 2},
            "frequencyPenalty": {**NUM, "minimum": -2, "maximum": 2},
            "responseMimeType": STR,
            "responseSchema": ANY_OBJECT,
            "responseJsonSchema": ANY_OBJECT,
            "responseModalities": arr({**STR, "examples": ["TEXT", "IMAGE"]}),
            "imageConfig": obj(
                {
                    "aspectRatio": {**STR, "examples": ["1:1", "16:9"]},
                    "imageSize": {**STR, "examples": ["1K", "2K", "4K"]},
                }
            ),
            "thinkingConfig": obj(
                {
                    "thinkingBudget": {**INT, "minimum": -1, "maximum": INT32_MAX},
                    "includeThoughts": BOOL,
                    "thinkingLevel": STR,
                }
            ),
        }
    ),
    "GenerateContentRequest": obj(
        {
            "contents": arr(ref("Content"), minItems=1),
            "systemInstruction": ref("Content"),
            "generationConfig": ref("GenerationConfig"),
            "safetySettings": arr(obj({"category": STR, "threshold": STR})),
            "tools": arr(ANY_OBJECT),
            "toolConfig": ANY_OBJECT,
            "cachedContent": STR,
            "labels": {"type": "object", "additionalProperties": STR},
        },
        "contents",
    ),
    "CountTokensRequest": obj(
        {"contents": arr(ref("Content")), "generateContentRequest": ref("GenerateContentRequest")}
    ),
    "UsageMetadata": obj(
        {
            "promptTokenCount": INT,
            "candidatesTokenCount": INT,
            "thoughtsTokenCount": INT,
            "cachedContentTokenCount": INT,
            "totalTokenCount": INT,
            "promptTokensDetails": _TOKENS,
            "candidatesTokensDetails": _TOKENS,
        }
    ),
    "GenerateContentResponse": obj(
        {
            "candidates": arr(
                obj(
                    {
                        "content": ref("Content"),
                        "finishReason": STR,
                        "finishMessage": STR,
                        "index": INT,
                        "safetyRatings": arr(ANY_OBJECT),
                    }
                )
            ),
            "promptFeedback": obj({"blockReason": STR, "safetyRatings": arr(ANY_OBJECT)}),
            "usageMetadata": ref("UsageMetadata"),
            "modelVersion": STR,
            "responseId": STR,
        }
    ),
    "CountTokensResponse": obj(
        {"totalTokens": INT, "cachedContentTokenCount": INT, "promptTokensDetails": _TOKENS},
        "totalTokens",
    ),
    "Model": obj(
        {
            "name": {**STR, "examples": ["models/gemini-2.5-flash-image"]},
            "baseModelId": STR,
            "version": STR,
            "displayName": STR,
            "description": STR,
            "inputTokenLimit": INT,
            "outputTokenLimit": INT,
            "supportedGenerationMethods": arr(STR),
            "aliases": arr(STR),
            "imageConfig": obj(
                {"aspectRatios": arr(STR), "imageSizes": arr(STR), "maxInputImages": INT}
            ),
        },
        "name",
    ),
    "ListModelsResponse": obj({"models": arr(ref("Model")), "nextPageToken": STR}, "models"),
    "GoogleError": obj(
        {"error": obj({"code": INT, "message": STR, "status": STR}, "code", "message", "status")},
        "error",
    ),
    # GET /v1/models(/…) answers errors in either envelope (see paths.shared_listing).
    "DialectError": {"anyOf": [ref("GoogleError"), ref("OpenAIError")]},
    # One streamed event: `data` is a GenerateContentResponse (or, last, a GoogleError).
    "GeminiEvent": obj(
        {
            "data": {
                **STR,
                "contentMediaType": JSON,
                "contentSchema": ref("GenerateContentResponse"),
            }
        },
        "data",
    ),
}

_IMAGE_URL = obj({"url": STR, "detail": STR}, "url")
_PART = obj(
    {"type": enum("text", "image_url"), "text": STR, "image_url": {"anyOf": [STR, _IMAGE_URL]}},
    "type",
)
_CHAT_USAGE = obj(
    {
        "prompt_tokens": INT,
        "completion_tokens": INT,
        "total_tokens": INT,
        "prompt_tokens_details": obj({"cached_tokens": INT, "image_tokens": INT}),
        "completion_tokens_details": obj({"reasoning_tokens": INT, "image_tokens": INT}),
    }
)
_IMAGE_SETTINGS = {"aspect_ratio": STR, "image_size": STR}
_OPENAI_MODEL = obj({"id": STR, "object": STR, "created": INT, "owned_by": STR}, "id", "object")

OPENAI_SCHEMAS: dict[str, Schema] = {
    "ChatMessage": obj(
        {
            "role": enum("system", "developer", "user", "assistant", "tool", "function"),
            "content": {"anyOf": [STR, arr(_PART), {"type": "null"}]},
            "name": STR,
            "tool_calls": arr(ANY_OBJECT),
            "tool_call_id": STR,
            "images": arr(obj({"type": STR, "image_url": _IMAGE_URL})),
        },
        "role",
    ),
    "ChatCompletionRequest": obj(
        {
            "model": {**STR, "examples": ["gemini-2.5-flash-image"]},
            "messages": arr(ref("ChatMessage"), minItems=1),
            "stream": BOOL,
            "stream_options": obj({"include_usage": BOOL}),
            "n": {**INT, "minimum": 1},
            "temperature": {**NUM, "minimum": 0, "maximum": 2},
            "top_p": {**NUM, "minimum": 0, "maximum": 1},
            "presence_penalty": {**NUM, "minimum": -2, "maximum": 2},
            "frequency_penalty": {**NUM, "minimum": -2, "maximum": 2},
            "max_tokens": {**INT, "minimum": 1},
            "max_completion_tokens": {**INT, "minimum": 1},
            "seed": INT,
            "stop": {"anyOf": [STR, arr(STR)]},
            "response_format": obj(
                {"type": enum("text", "json_object", "json_schema"), "json_schema": ANY_OBJECT}
            ),
            "modalities": arr(enum("text", "image")),
            "image_config": obj(_IMAGE_SETTINGS),
            "image_output": enum("data", "url"),
            "reasoning_effort": enum("none", "minimal", "low", "medium", "high"),
            "tools": arr(ANY_OBJECT),
            "tool_choice": {"anyOf": [STR, ANY_OBJECT]},
        },
        "model",
        "messages",
    ),
    "ChatCompletion": obj(
        {
            "id": STR,
            "object": {"const": "chat.completion"},
            "created": INT,
            "model": STR,
            "choices": arr(
                obj(
                    {
                        "index": INT,
                        "message": obj(
                            {
                                "role": STR,
                                "content": nullable(STR),
                                "reasoning_content": STR,
                                "images": arr(obj({"type": STR, "image_url": _IMAGE_URL})),
                                "tool_calls": arr(ANY_OBJECT),
                            },
                            "role",
                        ),
                        "finish_reason": nullable(STR),
                        "logprobs": {"type": "null"},
                    },
                    "index",
                    "message",
                )
            ),
            "usage": _CHAT_USAGE,
        },
        "id",
        "object",
        "choices",
    ),
    "ImagesGenerationRequest": obj(
        {
            "prompt": {**STR, "minLength": 1},
            "model": {**STR, "examples": ["gemini-2.5-flash-image"]},
            "n": {**INT, "minimum": 1},
            "size": {**STR, "examples": ["1024x1024", "auto"]},
            "response_format": enum("b64_json", "url"),
            "output_format": enum("png", "jpeg", "webp"),
            **_IMAGE_SETTINGS,
        },
        "prompt",
    ),
    "ImagesEditRequest": obj(
        {
            "image": arr({**STR, "format": "binary"}, minItems=1),
            "image[]": arr({**STR, "format": "binary"}),
            "mask": {**STR, "format": "binary"},
            "prompt": {**STR, "minLength": 1},
            "model": STR,
            "n": {**INT, "minimum": 1},
            "size": STR,
            "response_format": enum("b64_json", "url"),
            "output_format": enum("png", "jpeg", "webp"),
            **_IMAGE_SETTINGS,
        },
        "prompt",
    ),
    "ImagesResponse": obj(
        {
            "created": INT,
            "data": arr(obj({"b64_json": STR, "url": STR, "revised_prompt": STR})),
            "output_format": STR,
            "size": STR,
            "usage": ANY_OBJECT,
        },
        "created",
        "data",
    ),
    "OpenAIModel": _OPENAI_MODEL,
    "OpenAIModelList": obj({"object": {"const": "list"}, "data": arr(_OPENAI_MODEL)}, "data"),
    "OpenAIError": obj(
        {
            "error": obj(
                {"message": STR, "type": STR, "param": nullable(STR), "code": nullable(STR)},
                "message",
                "type",
                "param",
                "code",
            )
        },
        "error",
    ),
    # One streamed event: a chat.completion.chunk, an error, or the closing [DONE].
    "OpenAIEvent": obj({"data": STR}, "data"),
}


def _task_input(aspect_in_size: bool) -> Schema:
    props: dict[str, Any] = {
        "prompt": {**STR, "minLength": 1, "maxLength": 100_000},
        "image_urls": {
            "anyOf": [{**STR, "format": "uri"}, arr({**STR, "format": "uri", "maxLength": 2048})]
        },
        "aspect_ratio": {**STR, "examples": ["16:9", "auto"]},
        "resolution": {**STR, "examples": ["1K", "2K", "4K"]},
        "output_format": enum("png", "jpeg", "jpg", "webp"),
    }
    if aspect_in_size:
        props["image_size"] = {**STR, "description": "The aspect ratio, such as '16:9'."}
    return obj(props, "prompt")


def _envelope(text: str, data: Schema) -> Schema:
    return obj({"code": INT, text: STR, "data": data}, "code", text, "data", extra=False)


_URL = {**STR, "format": "uri"}
_TASK_MESSAGE = obj(
    {
        "task_id": STR,
        "model": STR,
        "status": enum("pending", "running", "succeeded", "failed"),
        "param": ANY_OBJECT,
        "result": nullable(obj({"urls": arr(STR)})),
        "error": nullable(obj({"code": nullable(INT), "message": nullable(STR)})),
        "create_at": nullable(INT),
        "complete_at": nullable(INT),
        "duration_s": nullable(NUM),
        "cost": nullable(INT),
    },
    "task_id",
    "status",
)
_TASK_MSG = obj(
    {
        "taskId": STR,
        "model": STR,
        "state": enum("waiting", "generating", "success", "fail"),
        "param": STR,
        "resultJson": STR,
        "failCode": STR,
        "failMsg": STR,
        "costTime": nullable(INT),
        "createTime": nullable(INT),
        "completeTime": nullable(INT),
        "credits": nullable(INT),
    },
    "taskId",
    "state",
)

TASK_SCHEMAS: dict[str, Schema] = {
    "CreateTaskRequest": obj(
        {
            "model": {**STR, "examples": ["google/nano-banana"]},
            "input": _task_input(False),
            "callback_url": _URL,
        },
        "model",
        "input",
    ),
    "CreateTaskJobsRequest": obj(
        {
            "model": {**STR, "examples": ["google/nano-banana"]},
            "input": _task_input(True),
            "callBackUrl": _URL,
        },
        "model",
        "input",
    ),
    "TaskCreated": _envelope("message", obj({"task_id": STR}, "task_id")),
    "TaskCreatedJobs": _envelope("msg", obj({"taskId": STR}, "taskId")),
    "TaskInfo": _envelope("message", _TASK_MESSAGE),
    "RecordInfo": _envelope("msg", _TASK_MSG),
    "ClientBalance": _envelope("message", obj({"balance": INT}, "balance")),
    "ChatCredit": _envelope("msg", INT),
    "TaskError": _envelope("message", {"type": "null"}),
    "TaskErrorJobs": _envelope("msg", {"type": "null"}),
}

# -- security ------------------------------------------------------------------------------------


def _api_key(where: str, name: str, description: str) -> Schema:
    return {"type": "apiKey", "in": where, "name": name, "description": description}


_BEARER = {"type": "http", "scheme": "bearer"}
CLIENT_HELP = "A client key (ng_...); any of the four carriers works on every client route."
ADMIN_HELP = "An admin key (nga_...), in a header: on /admin, ?key= is a filter, not a key."
SECURITY_SCHEMES: dict[str, Schema] = {
    "GoogApiKey": _api_key("header", "x-goog-api-key", CLIENT_HELP),
    "KeyQuery": _api_key("query", "key", CLIENT_HELP),
    "Bearer": {**_BEARER, "description": CLIENT_HELP},
    "ApiKey": _api_key("header", "x-api-key", CLIENT_HELP),
    "AdminApiKey": _api_key("header", "x-api-key", ADMIN_HELP),
    "AdminGoogApiKey": _api_key("header", "x-goog-api-key", ADMIN_HELP),
    "AdminBearer": {**_BEARER, "description": ADMIN_HELP},
    "ConsoleSession": _api_key(
        "cookie",
        "nanogate_session",
        "The console's session (POST /admin/session); a request that changes something also "
        "sends the session's CSRF token as X-CSRF-Token.",
    ),
}
CLIENT: list[dict[str, list[str]]] = [
    {name: []} for name in ("GoogApiKey", "KeyQuery", "Bearer", "ApiKey")
]
ADMIN: list[dict[str, list[str]]] = [
    {name: []} for name in ("AdminApiKey", "AdminGoogApiKey", "AdminBearer", "ConsoleSession")
]

# -- responses -----------------------------------------------------------------------------------

MEANING = {
    304: "Not modified: the If-None-Match tag matches.",
    400: "The request is malformed or a value is not accepted; the message names the field.",
    401: "No API key, or one this gateway does not know.",
    402: "The account's balance, or a spend cap of the key, does not cover the call.",
    403: "The key is revoked or expired, or may not do this (call this model, use /admin).",
    404: "No such model, task, key, account or stored object.",
    409: "The Idempotency-Key was already used with a different request, or the change "
    "conflicts with the account's state.",
    410: "The file link has expired.",
    413: "The request body is over this gateway's max_request_bytes.",
    422: "The request is malformed or a value is not accepted (the task API's 400).",
    429: "A rate or concurrency limit of the key, every upstream is throttling, or too many "
    "unknown keys came from the client's address this minute.",
    455: "The gateway is in maintenance mode (the task API's 503).",
    500: "An internal error, or an upstream answer that could not be read.",
    501: "The operator switched this feature off.",
    503: "Maintenance mode, no upstream available, or the database or result storage is "
    "unreachable.",
    504: "The upstream did not answer in time.",
    505: "The operator switched this feature off (the task API's 501).",
    "4XX": "An upstream refused the request itself: its status and message, passed on.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": INT}}


def errors(envelope: str, *statuses: int | str) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status in statuses:
        answer: dict[str, Any] = {
            "description": MEANING[status],
            "content": {JSON: {"schema": ref(envelope)}},
        }
        if status in (429, 455, 503):
            answer["headers"] = _RETRY_AFTER
        answers[str(status)] = answer
    return answers


def ok(schema: Schema, description: str = "OK", media: str = JSON) -> dict[str, Any]:
    return {"200": {"description": description, "content": {media: {"schema": schema}}}}


def link(path: str, method: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to the operation at `path`, `method`: what clients and the fuzzer's
    stateful phase follow from one answer to the next call."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method}", "parameters": parameters}


def body(schema: Schema, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {JSON: media}}


def param(name: str, where: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path" or schema.pop("required", False),
        "description": description,
        "schema": {"type": "string", **schema},
    }


IDEMPOTENCY = param(
    "Idempotency-Key",
    "header",
    "Makes a retry safe: the same request with the same key gets the first answer back, "
    "charged once. 1 to 255 printable ASCII characters, new for each operation.",
    minLength=1,
    maxLength=255,
    pattern="^[!-~]+$",
)
