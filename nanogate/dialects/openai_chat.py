"""OpenAI chat completions to and from the canonical Gemini form. Pure functions.

Requests: messages become `contents` (system and developer messages `systemInstruction`,
assistant turns `model` turns, tool results `functionResponse` parts), parameters become
`generationConfig`, `tools` and `toolConfig`. Remote image URLs are left as slots the route
fills after fetching them under the egress guard.

Answers: text goes to `message.content`, images to `message.images[]` (never markdown in the
content), function calls to `tool_calls`. A Gemini 3 function call's thought signature rides in
its tool call id, so a client that sends the conversation back sends the signature back too.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson

from nanogate.core.canonical import Candidate
from nanogate.core.catalog import ModelSpec
from nanogate.core.inline import Blob, Text, text_of
from nanogate.core.media import decode_base64, sniff_image
from nanogate.dialects import openai
from nanogate.dialects.openai import Tokens, bad, show

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MODALITIES = {"text": "TEXT", "image": "IMAGE"}
# reasoning_effort to a thinking budget in tokens (0 turns thinking off where a model allows).
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
IMAGE_OUTPUTS = ("data", "url")
# Where a tool call id carries a Gemini thought signature: call_<random>__ts__<signature>.
_SIGNATURE_MARK = "__ts__"
# Google's documented stand-in for a signature a client did not keep (Gemini 3 requires one on
# every function call it is shown again).
_SKIP_SIGNATURE = "skip_thought_signature_validator"


@dataclass(slots=True)
class RemoteImage:
    """An http(s) image_url to fetch; `part` is filled with its inlineData once fetched."""

    param: str
    url: str
    part: dict[str, Any]


@dataclass(slots=True)
class ChatRequest:
    model: str
    gemini: dict[str, Any]  # the canonical GenerateContentRequest
    remote: list[RemoteImage] = field(default_factory=list)
    stream: bool = False
    n: int = 1
    include_usage: bool = False
    image_output: str | None = None  # None: the key's default


def parse(doc: dict[str, Any], spec: ModelSpec, *, max_images: int) -> ChatRequest:
    """A chat completions body, already resolved to `spec`, as the canonical request.

    Unknown parameters are ignored, as OpenAI clients expect; a known one with a wrong value
    raises a 400 that names it.
    """
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", f"must be true or false, not {show(stream)}.")
    # Image models give one image per call, so n means n calls (at most max_images); text
    # models answer n candidates in one call (Gemini allows up to 8).
    n = openai.count(doc, max_images if spec.is_image else 8)
    options = doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", 'must be an object such as {"include_usage": true}.')
    include_usage = bool((options or {}).get("include_usage"))
    system, contents, remote = _messages(doc.get("messages"), spec)
    gemini: dict[str, Any] = {"contents": contents}
    if system:
        gemini["systemInstruction"] = {"parts": system}
    config = _generation_config(doc, spec)
    if n > 1 and not spec.is_image:
        config["candidateCount"] = n
    if config:
        gemini["generationConfig"] = config
    tools = _tools(doc.get("tools"))
    if tools:
        gemini["tools"] = [{"functionDeclarations": tools}]
    tool_config = _tool_choice(doc.get("tool_choice"), tools)
    if tool_config:
        gemini["toolConfig"] = tool_config
    return ChatRequest(
        model=spec.name,
        gemini=gemini,
        remote=remote,
        stream=bool(stream),
        n=n,
        include_usage=include_usage,
        image_output=openai.choice(doc, "image_output", IMAGE_OUTPUTS),
    )


def attach(image: RemoteImage, mime: str, data: bytes) -> None:
    """Fill a fetched remote image into its slot in the canonical request."""
    image.part["inlineData"] = {"mimeType": mime, "data": base64.b64encode(data).decode()}


# -- messages ----------------------------------------------------------------------------------


def _messages(
    messages: Any, spec: ModelSpec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[RemoteImage]]:
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty array of messages.")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    remote: list[RemoteImage] = []
    call_names: dict[str, str] = {}  # tool call id -> function name, for tool results
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad(where, "must be an object with 'role' and 'content'.")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"must be one of {', '.join(ROLES)}; got {show(role)}.")
        content = message.get("content")
        if role in ("system", "developer"):
            system += [{"text": text} for text in _texts(content, f"{where}.content")]
        elif role == "user":
            parts = _user_parts(content, f"{where}.content", spec, remote)
            contents.append({"role": "user", "parts": parts})
        elif role == "assistant":
            parts = _assistant_parts(message, where, spec, call_names, remote)
            if parts:
                contents.append({"role": "model", "parts": parts})
        else:
            part = _tool_result(message, role, where, call_names)
            last = contents[-1] if contents else None
            # Results of one turn's calls go back together, in one user turn, as Gemini wants.
            if last and last["role"] == "user" and "functionResponse" in last["parts"][-1]:
                last["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part]})
    if not contents:
        raise bad("messages", "needs at least one user message besides system messages.")
    return system, contents, remote


def _texts(content: Any, where: str) -> list[str]:
    """A content that may only hold text: a string or an array of text parts."""
    if isinstance(content, Blob):  # a long base64-looking text in a large body
        content = text_of(content)
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise bad(where, "must be a string or an array of text parts.")
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise bad(f"{where}[{index}]", "only text parts are allowed here.")
        texts.append(_text(part, f"{where}[{index}]"))
    return texts


def _text(part: dict[str, Any], where: str) -> str:
    text = part.get("text")
    if isinstance(text, Blob):
        text = text_of(text)
    if not isinstance(text, str):
        raise bad(f"{where}.text", "must be a string.")
    return text


def _user_parts(
    content: Any, where: str, spec: ModelSpec, remote: list[RemoteImage]
) -> list[dict[str, Any]]:
    if isinstance(content, Blob):
        content = text_of(content)
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list) or not content:
        raise bad(where, "must be a string or a non-empty array of content parts.")
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            assert isinstance(part, dict)
            parts.append({"text": _text(part, at)})
        elif kind == "image_url":
            assert isinstance(part, dict)
            parts.append(_image_part(part.get("image_url"), f"{at}.image_url", spec, remote))
        else:
            raise bad(
                f"{at}.type",
                f"{show(kind)} is not supported; use 'text' or 'image_url' parts.",
            )
    return parts


def _image_part(
    value: Any, where: str, spec: ModelSpec, remote: list[RemoteImage]
) -> dict[str, Any]:
    url = value.get("url") if isinstance(value, dict) else value
    if isinstance(url, Blob):
        return {"inlineData": _data_url(url, where, spec)}
    if not isinstance(url, str) or not url:
        raise bad(f"{where}.url", "is required: a data: URL or an http(s) URL of an image.")
    if url.startswith("data:"):
        return {"inlineData": _data_url(url, where, spec)}
    if url.startswith(("http://", "https://")):
        part: dict[str, Any] = {}
        remote.append(RemoteImage(f"{where}.url", url, part))
        return part
    raise bad(f"{where}.url", "must be a data: URL or an http(s) URL.")


def _data_url(url: Text, where: str, spec: ModelSpec) -> dict[str, Any]:
    """`data:<mime>;base64,<data>` as inlineData, without copying the data when it is long."""
    head = url.head(200) if isinstance(url, Blob) else url[:200].encode()
    comma = head.find(b",")
    header = head[5:comma].decode("ascii", "replace") if comma > 0 else ""
    mime, _, encoding = header.partition(";")
    if comma < 0 or encoding != "base64":
        raise bad(f"{where}.url", "a data: URL must read data:<image type>;base64,<data>.")
    data: Text = url.after(comma + 1) if isinstance(url, Blob) else url[comma + 1 :]
    mime = mime.lower()
    if mime not in spec.input_mime_types:
        allowed = ", ".join(sorted(spec.input_mime_types))
        raise bad(f"{where}.url", f"{show(mime)} is not accepted by {spec.name}; use {allowed}.")
    sample = data.head(88) if isinstance(data, Blob) else data[:88]
    decoded = decode_base64(sample[: len(sample) // 4 * 4])
    if decoded is None or sniff_image(decoded) is None:
        raise bad(f"{where}.url", f"the data URL does not hold a base64 image ({mime}).")
    return {"mimeType": mime, "data": data}


def _assistant_parts(
    message: dict[str, Any],
    where: str,
    spec: ModelSpec,
    call_names: dict[str, str],
    remote: list[RemoteImage],
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if content is not None:
        texts = _texts(content, f"{where}.content")
        parts += [{"text": text} for text in texts if text]
    # Images this gateway returned earlier, sent back as history for a multi-turn edit.
    images = message.get("images")
    for index, image in enumerate(images if isinstance(images, list) else ()):
        value = image.get("image_url") if isinstance(image, dict) else None
        parts.append(_image_part(value, f"{where}.images[{index}].image_url", spec, remote))
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise bad(f"{where}.tool_calls", "must be an array.")
    for index, call in enumerate(calls or ()):
        parts.append(_call_part(call, f"{where}.tool_calls[{index}]", spec, call_names))
    return parts


def _call_part(
    call: Any, where: str, spec: ModelSpec, call_names: dict[str, str]
) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.function.name", "is required.")
    assert isinstance(call, dict) and isinstance(function, dict)
    raw = function.get("arguments") or "{}"
    try:
        args = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise bad(f"{where}.function.arguments", "must be a JSON object, as a string.")
    call_id = call.get("id")
    signature = None
    if isinstance(call_id, str):
        call_names[call_id] = name
        signature = call_id.partition(_SIGNATURE_MARK)[2] or None
    if signature is None and spec.name.startswith("gemini-3"):
        signature = _SKIP_SIGNATURE
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    if signature:
        part["thoughtSignature"] = signature
    return part


def _tool_result(
    message: dict[str, Any], role: str, where: str, call_names: dict[str, str]
) -> dict[str, Any]:
    if role == "function":  # the legacy form names the function itself
        name = message.get("name")
    else:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise bad(f"{where}.tool_call_id", "is required on tool messages.")
        name = call_names.get(call_id)
        if name is None:
            raise bad(
                f"{where}.tool_call_id",
                f"{show(call_id)} matches no tool call of an earlier assistant message.",
            )
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name", "is required.")
    text = "".join(_texts(message.get("content") or "", f"{where}.content"))
    try:
        parsed = orjson.loads(text) if text.strip() else {}
    except orjson.JSONDecodeError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


# -- parameters --------------------------------------------------------------------------------


def _generation_config(doc: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, key, low, high in (
        ("temperature", "temperature", 0.0, 2.0),
        ("top_p", "topP", 0.0, 1.0),
        ("presence_penalty", "presencePenalty", -2.0, 2.0),
        ("frequency_penalty", "frequencyPenalty", -2.0, 2.0),
    ):
        value = openai.number(doc, name, low, high)
        if value is not None:
            config[key] = value
    limit = spec.output_token_limit
    for name in ("max_completion_tokens", "max_tokens"):
        value = openai.number(doc, name, 1, limit, integer=True)
        if value is not None:
            config["maxOutputTokens"] = value
            break
    # Gemini's seed is an int32: a wider one would be refused as generationConfig.seed.
    seed = openai.number(doc, "seed", -(2**31), 2**31 - 1, integer=True)
    if seed is not None:
        config["seed"] = seed
    stop = _stop(doc.get("stop"))
    if stop:
        config["stopSequences"] = stop
    config.update(_response_format(doc.get("response_format")))
    modalities = _modalities(doc.get("modalities"), spec)
    if modalities:
        config["responseModalities"] = modalities
    image = _image_config(doc.get("image_config"), spec)
    if image:
        config["imageConfig"] = image
    effort = openai.choice(doc, "reasoning_effort", THINKING_BUDGETS)
    if effort is not None:
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    return config


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or not all(isinstance(s, str) and s for s in stops)
        or len(stops) > 5
    ):
        raise bad("stop", "must be a string or an array of at most 5 non-empty strings.")
    return list(stops)


def _response_format(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        assert isinstance(value, dict)
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad("response_format.json_schema.schema", "must be a JSON Schema object.")
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise bad(
        "response_format.type", f"must be text, json_object or json_schema; got {show(kind)}."
    )


def _modalities(value: Any, spec: ModelSpec) -> list[str]:
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or not value
        or any(not isinstance(m, str) or m not in MODALITIES for m in value)
    ):
        raise bad("modalities", f"must be an array of 'text' and 'image'; got {show(value)}.")
    if "image" in value and not spec.is_image:
        raise bad("modalities", f"{spec.name} is a text model; it cannot answer with images.")
    return [MODALITIES[m] for m in dict.fromkeys(value)]


def _image_config(value: Any, spec: ModelSpec) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad("image_config", "must be an object: {aspect_ratio, image_size}.")
    if not spec.is_image:
        raise bad("image_config", f"is only for image models; {spec.name} is a text model.")
    return image_settings(value.get("aspect_ratio"), value.get("image_size"), spec, "image_config.")


def image_settings(ratio: Any, size: Any, spec: ModelSpec, where: str = "") -> dict[str, Any]:
    """A checked Gemini imageConfig from an aspect ratio and a size tier (either may be None)."""
    config: dict[str, Any] = {}
    if ratio is not None:
        if ratio not in spec.aspect_ratios:
            raise bad(
                f"{where}aspect_ratio",
                f"{show(ratio)} is not supported by {spec.name}; "
                f"use one of {', '.join(spec.aspect_ratios)}.",
            )
        config["aspectRatio"] = ratio
    if size is not None:
        if size not in spec.image_sizes:
            raise bad(
                f"{where}image_size",
                f"{show(size)} is not supported by {spec.name}; "
                f"use one of {', '.join(spec.image_sizes) or '(none: one size only)'}.",
            )
        config["imageSize"] = size
    return config


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad("tools", "must be an array of function tools.")
    declarations = []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad(f"{where}.type", "only 'function' tools are supported.")
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise bad(f"{where}.function.name", "is required.")
        assert isinstance(function, dict)
        declaration: dict[str, Any] = {"name": name}
        if isinstance(function.get("description"), str):
            declaration["description"] = function["description"]
        parameters = function.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise bad(f"{where}.function.parameters", "must be a JSON Schema object.")
            declaration["parametersJsonSchema"] = parameters
        declarations.append(declaration)
    return declarations


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> dict[str, Any]:
    if value is None:
        return {}
    modes = {"none": "NONE", "auto": "AUTO", "required": "ANY"}
    if isinstance(value, str) and value in modes:
        return {"functionCallingConfig": {"mode": modes[value]}}
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise bad(
            "tool_choice",
            "must be none, auto, required or {type: function, function: {name}}.",
        )
    if name not in {tool["name"] for tool in tools}:
        raise bad("tool_choice.function.name", f"{show(name)} is not one of the tools given.")
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}


# -- answers -----------------------------------------------------------------------------------


def _tool_calls(candidate: Candidate) -> list[dict[str, Any]]:
    calls = []
    for call in candidate.calls:
        call_id = f"call_{secrets.token_hex(8)}"
        if call.get("signature"):
            call_id += _SIGNATURE_MARK + str(call["signature"])
        args = call.get("args")
        calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": orjson.dumps(args if isinstance(args, dict) else {}).decode(),
                },
            }
        )
    return calls


def _images(candidate: Candidate, urls: dict[int, str]) -> list[dict[str, Any]]:
    return [
        {"type": "image_url", "image_url": {"url": urls.get(id(image)) or openai.data_url(image)}}
        for image in candidate.images
    ]


def completion(
    request_id: str,
    model: str,
    created: int,
    choices: list[Candidate],
    tokens: Tokens,
    *,
    urls: dict[int, str] | None = None,
) -> dict[str, Any]:
    """The chat.completion object. `urls` maps id(image) to its stored URL in URL mode."""
    rendered = []
    for candidate in choices:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(candidate.text) or None,
        }
        if candidate.thoughts:
            message["reasoning_content"] = "".join(candidate.thoughts)
        if candidate.images:
            message["images"] = _images(candidate, urls or {})
        calls = _tool_calls(candidate)
        if calls:
            message["tool_calls"] = calls
        finish = openai.finish_reason(candidate.finish or "STOP", calls=bool(calls))
        rendered.append(
            {
                "index": candidate.index,
                "message": message,
                "finish_reason": finish,
                "logprobs": None,
            }
        )
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": rendered,
        "usage": tokens.chat(),
    }


class ChatStream:
    """Streamed answers as chat.completion.chunk objects: text as deltas, each image in a
    chunk of its own, the finish reason in a chunk after the content."""

    def __init__(self, request_id: str, model: str, created: int) -> None:
        self.base = {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self.started: set[int] = set()
        self.call_counts: dict[int, int] = {}
        self.finished: set[int] = set()

    def _chunk(
        self, index: int, delta: dict[str, Any], finish: str | None = None
    ) -> dict[str, Any]:
        if index not in self.started:
            self.started.add(index)
            delta = {"role": "assistant", **delta}
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**self.base, "choices": [choice]}

    def feed(self, candidates: list[Candidate], urls: dict[int, str] | None = None) -> list[Any]:
        chunks: list[dict[str, Any]] = []
        for candidate in candidates:
            index = candidate.index
            if candidate.thoughts:
                delta = {"reasoning_content": "".join(candidate.thoughts)}
                chunks.append(self._chunk(index, delta))
            if candidate.text:
                chunks.append(self._chunk(index, {"content": "".join(candidate.text)}))
            for image in _images(candidate, urls or {}):
                chunks.append(self._chunk(index, {"images": [image]}))
            calls = _tool_calls(candidate)
            if calls:
                first = self.call_counts.get(index, 0)
                self.call_counts[index] = first + len(calls)
                numbered = [{"index": first + k, **call} for k, call in enumerate(calls)]
                chunks.append(self._chunk(index, {"tool_calls": numbered}))
            if candidate.finish is not None and index not in self.finished:
                self.finished.add(index)
                made_calls = self.call_counts.get(index, 0) > 0
                finish = openai.finish_reason(candidate.finish, calls=made_calls)
                chunks.append(self._chunk(index, {}, finish))
        return chunks

    def close(self, tokens: Tokens | None) -> list[dict[str, Any]]:
        """Finish reasons for choices that never got one, then the usage chunk if asked."""
        chunks = [self._chunk(index, {}, "stop") for index in sorted(self.started - self.finished)]
        if tokens is not None:
            chunks.append({**self.base, "choices": [], "usage": tokens.chat()})
        return chunks
