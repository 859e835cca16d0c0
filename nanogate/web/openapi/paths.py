"""The operations FastAPI cannot describe: the relay's plain Starlette routes (Gemini native with
its aliases, OpenAI-compatible, the shared model listing), the task API, signed files, stored
results and the operations endpoints. Each lists every status its route answers with, in the
envelope that route renders (see app._render)."""

from __future__ import annotations

from typing import Any

from nanogate.web.openapi.schemas import (
    ANY_OBJECT,
    CLIENT,
    IDEMPOTENCY,
    INT,
    JSON,
    MEANING,
    SSE,
    STR,
    Schema,
    arr,
    body,
    errors,
    link,
    obj,
    ok,
    param,
    ref,
)

Paths = dict[str, dict[str, Any]]

GEMINI = "Gemini native"
OPENAI = "OpenAI-compatible"
TASKS = "Task API"
# Where the Gemini native routes are mounted: Google's /v1beta, resellers' /v1/v1beta, and /v1,
# google-genai 3.x's default (calls only: GET /v1/models is shared, see `shared_listing`).
GEMINI_PREFIXES = ("/v1beta", "/v1/v1beta", "/v1")
# Statuses of a call that reaches an upstream; "4XX" is an upstream's own refusal, passed on.
CALL = (400, 401, 402, 403, 404, 413, 429, 500, 503, 504, "4XX")
PROMPT = "A red bicycle leaning on a yellow wall"
CONTENTS = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
REQUEST_ID = {"x-request-id": {"description": "The request's id (GET /v1/results).", "schema": STR}}


def operation(
    tag: str, op_id: str, summary: str, description: str = "", **rest: Any
) -> dict[str, Any]:
    found = {"tags": [tag], "operationId": op_id, "summary": summary, **rest}
    if description:
        found["description"] = description
    return found


def _suffix(prefix: str) -> str:
    return "" if prefix == "/v1beta" else prefix.replace("/", "_")


def _alias(prefix: str, what: str) -> str:
    return "" if prefix == "/v1beta" else f"The same as {what} under /v1beta. "


def gemini(prefix: str, model: dict[str, Any]) -> Paths:
    """generateContent, streamGenerateContent and countTokens under `prefix`, and the model
    listing under the prefixes that have their own."""
    base = f"{prefix}/models/{{model}}"
    suffix = _suffix(prefix)
    results_link = {
        "GetResult": link(
            "/v1/results/{request_id}", "get", request_id="$response.header.x-request-id"
        )
    }
    generated = ok(ref("GenerateContentResponse"))
    generated["200"]["headers"] = REQUEST_ID
    generated["200"]["links"] = results_link
    paths: Paths = {
        f"{base}:generateContent": {
            "post": operation(
                GEMINI,
                f"generateContent{suffix}",
                "Generate content (text and images)",
                _alias(prefix, "generateContent")
                + "The body is forwarded as it came once checked against the model's catalog "
                "entry (image count, aspect ratio, size tier).",
                parameters=[model, IDEMPOTENCY],
                requestBody=body(ref("GenerateContentRequest"), CONTENTS),
                responses={**generated, **errors("GoogleError", *CALL, 409)},
                security=CLIENT,
            )
        },
        f"{base}:streamGenerateContent": {
            "post": operation(
                GEMINI,
                f"streamGenerateContent{suffix}",
                "Stream generated content",
                _alias(prefix, "streamGenerateContent")
                + "With alt=sse, Server-Sent Events of GenerateContentResponse; otherwise the "
                "JSON array of them Google sends. An upstream failure after the first chunk "
                "arrives as a last chunk in the GoogleError envelope.",
                parameters=[
                    model,
                    param("alt", "query", "sse: Server-Sent Events.", enum=["sse", "json"]),
                ],
                requestBody=body(ref("GenerateContentRequest"), CONTENTS),
                responses={
                    "200": {
                        "description": "The chunks, as events or as one JSON array.",
                        "content": {
                            SSE: {"schema": ref("GeminiEvent")},
                            JSON: {"schema": arr(ref("GenerateContentResponse"))},
                        },
                    },
                    **errors("GoogleError", *CALL),
                },
                security=CLIENT,
            )
        },
        f"{base}:countTokens": {
            "post": operation(
                GEMINI,
                f"countTokens{suffix}",
                "Count a request's tokens (free)",
                _alias(prefix, "countTokens"),
                parameters=[model],
                requestBody=body(ref("CountTokensRequest"), CONTENTS),
                responses={
                    **ok(ref("CountTokensResponse")),
                    **errors("GoogleError", *(s for s in CALL if s != 402)),
                },
                security=CLIENT,
            )
        },
    }
    if prefix == "/v1":
        return paths
    paths[f"{prefix}/models"] = {
        "get": operation(
            GEMINI,
            f"listModels{suffix}",
            "List the models the key may call",
            _alias(prefix, "GET models"),
            responses={
                **ok(ref("ListModelsResponse")),
                **errors("GoogleError", 401, 403, 429, 503),
            },
            security=CLIENT,
        )
    }
    paths[base] = {
        "get": operation(
            GEMINI,
            f"getModel{suffix}",
            "A model's resource",
            _alias(prefix, "GET models/{model}"),
            parameters=[model],
            responses={**ok(ref("Model")), **errors("GoogleError", 401, 403, 404, 429, 503)},
            security=CLIENT,
        )
    }
    return paths


def shared_listing(model: dict[str, Any]) -> Paths:
    either = (
        "Shared by both dialects: a Gemini client (its key in x-goog-api-key or ?key=) gets "
        "Google's answer and error envelope, any other OpenAI's."
    )
    return {
        "/v1/models": {
            "get": operation(
                OPENAI,
                "listModels_v1",
                "List the models the key may call (OpenAI's or Google's form)",
                either,
                responses={
                    **ok({"anyOf": [ref("OpenAIModelList"), ref("ListModelsResponse")]}),
                    **errors("DialectError", 401, 403, 429, 503),
                },
                security=CLIENT,
            )
        },
        "/v1/models/{model}": {
            "get": operation(
                OPENAI,
                "getModel_v1",
                "A model (OpenAI's or Google's form)",
                either,
                parameters=[model],
                responses={
                    **ok({"anyOf": [ref("OpenAIModel"), ref("Model")]}),
                    **errors("DialectError", 401, 403, 404, 429, 503),
                },
                security=CLIENT,
            )
        },
    }


def openai(model: str) -> Paths:
    images = {
        **ok(ref("ImagesResponse")),
        **errors("OpenAIError", *CALL, 409),
    }
    images["400"]["description"] += " content_policy_violation: the model made no image."
    return {
        "/v1/chat/completions": {
            "post": operation(
                OPENAI,
                "createChatCompletion",
                "Chat completions (text and images)",
                "OpenAI's chat completions on any catalog model. Images come back in "
                "`choices[].message.images[]` (streamed: `delta.images`), as data URLs or, with "
                '`"image_output": "url"` or the key\'s default, signed result URLs. Extensions: '
                "`modalities`, `image_config {aspect_ratio, image_size}`, `image_output`.",
                parameters=[IDEMPOTENCY],
                requestBody=body(
                    ref("ChatCompletionRequest"),
                    {"model": model, "messages": [{"role": "user", "content": PROMPT}]},
                ),
                responses={
                    "200": {
                        "description": "A chat.completion, or with stream: chunks then [DONE].",
                        "content": {
                            JSON: {"schema": ref("ChatCompletion")},
                            SSE: {"schema": ref("OpenAIEvent")},
                        },
                    },
                    **errors("OpenAIError", *CALL, 409, 501),
                },
                security=CLIENT,
            )
        },
        "/v1/images/generations": {
            "post": operation(
                OPENAI,
                "createImage",
                "Generate images",
                "`size` maps to the nearest aspect ratio and size tier; `aspect_ratio` and "
                "`image_size` win over it.",
                parameters=[IDEMPOTENCY],
                requestBody=body(
                    ref("ImagesGenerationRequest"), {"model": model, "prompt": PROMPT}
                ),
                responses=images,
                security=CLIENT,
            )
        },
        "/v1/images/edits": {
            "post": operation(
                OPENAI,
                "createImageEdit",
                "Edit images",
                "Multipart: the image(s) as `image` or `image[]` (repeated), an optional `mask`.",
                parameters=[IDEMPOTENCY],
                requestBody={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": ref("ImagesEditRequest"),
                            "encoding": {
                                "image": {"contentType": "image/png, image/jpeg, image/webp"}
                            },
                        }
                    },
                },
                responses=images,
                security=CLIENT,
            )
        },
    }


def _task_links(id_name: str, info: str) -> dict[str, Any]:
    task_id = f"$response.body#/data/{id_name}"
    return {
        "GetTask": link(info, "get", **{id_name: task_id}),
        "GetTaskAsAdmin": link("/admin/tasks/{task_id}", "get", task_id=task_id),
        "GetCallbacks": link("/admin/callbacks", "get", task_id=task_id),
        "GetThumbnail": link("/admin/tasks/{task_id}/thumbnail", "get", task_id=task_id),
    }


def _tasks_form(
    model: str, form: str, create: str, info: str, balance: str, names: tuple[str, str, str, str]
) -> Paths:
    """One form's four routes; `names` are its schemas: request, created, balance, error."""
    request, created, credits, error = names
    id_name = "task_id" if form == "taskinfo" else "taskId"
    answer = ok(ref(created))
    answer["200"]["links"] = _task_links(id_name, info)
    record = {"anyOf": [ref("TaskInfo"), ref("RecordInfo")]}
    return {
        create: {
            "post": operation(
                TASKS,
                f"createTask_{form}",
                f"Create an image task (the {form} form)",
                "Answers at once with the task's id; poll it, or name a callback URL.",
                parameters=[IDEMPOTENCY],
                requestBody=body(ref(request), {"model": model, "input": {"prompt": PROMPT}}),
                responses={**answer, **errors(error, 401, 402, 404, 422, 429, 455, 500, 505)},
                security=CLIENT,
            )
        },
        info: {
            "get": operation(
                TASKS,
                f"getTask_{form}",
                f"A task's record (the {form} form)",
                "In the form the task was created in.",
                parameters=[param(id_name, "query", "The id the create call gave.", required=True)],
                responses={**ok(record), **errors(error, 401, 404, 422, 429, 455, 500)},
                security=CLIENT,
            )
        },
        balance: {
            "get": operation(
                TASKS,
                f"balance_{form}",
                f"The account's credits (the {form} form)",
                responses={**ok(ref(credits)), **errors(error, 401, 429, 455, 500)},
                security=CLIENT,
            )
        },
    }


def tasks(model: str) -> Paths:
    return {
        **_tasks_form(
            model,
            "taskinfo",
            "/api/v1/client/job/CreateTask",
            "/api/v1/client/job/TaskInfo",
            "/api/v1/client/account/balance",
            ("CreateTaskRequest", "TaskCreated", "ClientBalance", "TaskError"),
        ),
        **_tasks_form(
            model,
            "recordinfo",
            "/api/v1/jobs/createTask",
            "/api/v1/jobs/recordInfo",
            "/api/v1/chat/credit",
            ("CreateTaskJobsRequest", "TaskCreatedJobs", "ChatCredit", "TaskErrorJobs"),
        ),
    }


_BINARY = {"type": "string", "format": "binary"}
_FILE_TYPES = ("image/png", "image/jpeg", "image/webp", "application/json")


def files() -> Paths:
    def read(method: str) -> dict[str, Any]:
        return operation(
            "Files",
            f"{method}File",
            "A stored result behind a signed, expiring link",
            "The link is the credential: no key. Signature, then expiry, then lookup.",
            parameters=[
                param("name", "path", "The stored object's name."),
                param("expires", "query", "Unix time the link expires at.", required=True),
                param("sig", "query", "The link's signature.", required=True),
            ],
            responses={
                "200": {
                    "description": "The object's bytes.",
                    "content": {media: {"schema": _BINARY} for media in _FILE_TYPES},
                },
                "304": {"description": MEANING[304]},
                "307": {
                    "description": "With storage_redirect (S3 storage): the object's presigned "
                    "S3 URL in Location, valid until the link expires.",
                    "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
                },
                **errors("GoogleError", 403, 404, 410, 503),
            },
            security=[],
        )

    return {"/files/{name}": {"get": read("get"), "head": read("head")}}


def results() -> Paths:
    return {
        "/v1/results/{request_id}": {
            "get": operation(
                GEMINI,
                "getResult",
                "The stored answer of a call, by its request id",
                "Kept for result_ttl_hours when the call sent an Idempotency-Key or its client "
                "left before the answer was ready: the answer as that call gave it.",
                parameters=[param("request_id", "path", "The call's x-request-id.")],
                responses={
                    **ok(ANY_OBJECT, "The stored answer."),
                    "202": {
                        "description": "The call is still running on this node.",
                        "headers": {"Retry-After": {"schema": INT}},
                        "content": {JSON: {"schema": obj({"state": STR}, "state")}},
                    },
                    **errors("GoogleError", 401, 403, 404, 429, 503),
                },
                security=CLIENT,
            )
        }
    }


def operations() -> Paths:
    ready = obj(
        {
            "status": STR,
            "database": STR,
            "upstreams": {"type": "object", "additionalProperties": STR},
            "models": ANY_OBJECT,
        },
        "status",
        "database",
    )
    return {
        "/healthz": {
            "get": operation(
                "Operations",
                "healthz",
                "The process is up",
                responses=ok(obj({"status": STR}, "status")),
                security=[],
            )
        },
        "/readyz": {
            "get": operation(
                "Operations",
                "readyz",
                "The database answers and the gateway can take traffic",
                responses={
                    **ok(ready, "Ready: each upstream's state."),
                    "503": {
                        "description": "The database does not answer.",
                        "content": {JSON: {"schema": ready}},
                    },
                },
                security=[],
            )
        },
        "/metrics": {
            "get": operation(
                "Operations",
                "metrics",
                "Prometheus metrics",
                responses=ok(STR, "The Prometheus text format.", "text/plain"),
                security=[],
            )
        },
    }


def model_param(examples: list[str]) -> dict[str, Any]:
    schema: Schema = {"type": "string", "minLength": 1, "examples": examples}
    return {
        "name": "model",
        "in": "path",
        "required": True,
        "description": "A catalog name or alias (GET /v1beta/models lists them).",
        "schema": schema,
    }


def all_paths(examples: list[str]) -> Paths:
    """Every operation; `examples` are model names this gateway serves (an image model first)."""
    model = model_param(examples)
    found: Paths = {}
    for prefix in GEMINI_PREFIXES:
        found |= gemini(prefix, model)
    image = examples[0] if examples else "gemini-2.5-flash-image"
    found |= shared_listing(model) | openai(image) | tasks(image)
    return found | files() | results() | operations()
