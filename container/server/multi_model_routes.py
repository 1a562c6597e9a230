"""The multi-model endpoint's HTTP API, as SageMaker's front end calls it
(docs: "Custom Containers Contract for Multi-Model Endpoints"):

    POST   /models                {"model_name", "url"} -> 200; 409 loaded already;
                                  507 no memory for it; 400 no model at url
    GET    /models                ?page_size=&next_page_token= ->
                                  {"models": [{"modelName", "modelUrl"}], "nextPageToken"?}
    GET    /models/<name>         {"modelName", "modelUrl"}; 404 unknown
    DELETE /models/<name>         200; 404 unknown
    POST   /models/<name>/invoke  as /invocations (content types, top_k, errors)

The front end also sets X-Amzn-SageMaker-Target-Model (the TargetModel of
InvokeEndpoint); /invocations routes by it (app.py). The models themselves:
multi_model.py.
"""

from __future__ import annotations

import base64

from flask import Flask, jsonify, request

from server.errors import RequestError
from server.multi_model import WorkerModels
from server.parsing import json_document, model_name, shown, whole_number
from server.registry import Entry
from server.settings import Settings
from server.transport import invoke, read_body

MAX_LOAD_REQUEST_BYTES = 64 << 10
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def described(entry: Entry) -> dict:
    return {"modelName": entry.name, "modelUrl": entry.url}


def load_request() -> tuple[str, str]:
    document = json_document(read_body(MAX_LOAD_REQUEST_BYTES, limit="a /models request's limit") or b"null")
    if not isinstance(document, dict):
        raise RequestError('expected {"model_name": ..., "url": ...}')
    name, url = document.get("model_name"), document.get("url")
    if not isinstance(url, str) or not url.strip():
        raise RequestError('"url" must be a non-empty string')
    return model_name(name, '"model_name"'), url


def page_size() -> int:
    return whole_number(request.args.get("page_size", str(DEFAULT_PAGE_SIZE)), "page_size", 1, MAX_PAGE_SIZE)


def page_start() -> str:
    """The name the page starts at, from next_page_token (opaque to the caller)."""
    token = request.args.get("next_page_token", "")
    if not token:
        return ""
    try:
        return model_name(base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii"))
    except ValueError:  # RequestError, binascii.Error and UnicodeError are ValueErrors
        raise RequestError(f"next_page_token={shown(token)} is not one this server gave") from None


def add_routes(app: Flask, settings: Settings) -> WorkerModels:
    models = WorkerModels(settings)

    @app.post("/models")
    def load_model():
        name, url = load_request()
        entry = models.load(name, url)
        return jsonify(status=f"model {name!r} loaded", **described(entry))

    @app.get("/models")
    def list_models():
        size, start = page_size(), page_start()
        entries = [entry for entry in models.registry.ready() if entry.name >= start]
        answer: dict[str, object] = {"models": [described(entry) for entry in entries[:size]]}
        if len(entries) > size:
            answer["nextPageToken"] = base64.urlsafe_b64encode(entries[size].name.encode()).decode()
        return jsonify(answer)

    @app.get("/models/<name>")
    def describe_model(name: str):
        return jsonify(described(models.registry.get(name)))

    @app.delete("/models/<name>")
    def unload_model(name: str):
        entry = models.unload(name)
        return jsonify(status=f"model {name!r} unloaded", **described(entry))

    @app.post("/models/<name>/invoke")
    def invoke_model(name: str):
        with models.using(name) as service:
            return invoke(service, settings)

    return models
