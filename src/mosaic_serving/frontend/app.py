"""The ASGI application: routes, the optional API key, errors in OpenAI's shape.

Routes:
- GET  /health (= /health/ready): 200 when Triton is ready, else 503; /health/live: 200
- GET  /v1/models, /v1/models/<model>
- POST /v1/completions, /v1/chat/completions, /v1/embeddings, /v1/images/generations
- POST /<model>/predict, /<model>/predict_stream (MosaicML)

Every POST body is read as a JSON object first (malformed -> 400), and the work runs until
the client disconnects, which cancels it on Triton.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from typing import Any, Awaitable, Callable

from mosaic_client import ClientError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mosaic_serving.frontend import completions, embeddings, images, mosaicml
from mosaic_serving.frontend.body import Body, parse_json_object
from mosaic_serving.frontend.catalog import Kind, ServedModel
from mosaic_serving.frontend.errors import APIError, from_client_error
from mosaic_serving.frontend.state import Settings, State
from mosaic_serving.frontend.streaming import ClientGone, EventStream, until_disconnect

OPEN_PATHS = ("/health", "/health/live", "/health/ready")  # probes need no key
log = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers, media_type="application/json")


def error_response(error: APIError) -> Response:
    return Response(error.json_bytes(), error.status, error.headers(), media_type="application/json")


Handler = Callable[[State, Body, Request], Awaitable[Any]]


def post(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A POST endpoint: the JSON body, then `handler` until the client disconnects; its dict
    result as JSON, an EventStream as it is."""

    async def endpoint(request: Request) -> Response | EventStream:
        state: State = request.app.state.frontend
        try:
            body = Body(parse_json_object(await request.body()))
            result = await until_disconnect(request.receive, handler(state, body, request))
        except APIError as error:
            return error_response(error)
        except ClientError as error:
            return error_response(from_client_error(error))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the work was cancelled
        except Exception:  # noqa: BLE001 - a fault of the frontend: logged, answered in OpenAI's shape
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(APIError(500, "The frontend failed to answer; its log says why"))
        return result if isinstance(result, EventStream) else json_response(result)

    return endpoint


async def _completions(state: State, body: Body, request: Request) -> Any:
    text_request = completions.completion_request(body, state)
    return await _text(state, text_request, chat=False)


async def _chat(state: State, body: Body, request: Request) -> Any:
    text_request = completions.chat_request(body, state)
    return await _text(state, text_request, chat=True)


async def _text(state: State, text_request: completions.TextRequest, chat: bool) -> Any:
    await state.catalog.get(text_request.model, Kind.TEXT)
    if text_request.stream:
        return await completions.streamed(state, text_request, chat)
    return await completions.whole(state, text_request, chat)


async def _embeddings(state: State, body: Body, request: Request) -> Any:
    return await embeddings.embeddings(state, body)


async def _images(state: State, body: Body, request: Request) -> Any:
    return await images.generations(state, body)


async def _predict(state: State, body: Body, request: Request) -> Any:
    return await mosaicml.predict(state, request.path_params["model"], body)


async def _predict_stream(state: State, body: Body, request: Request) -> Any:
    return await mosaicml.predict_stream(state, request.path_params["model"], body)


def _model_object(model: ServedModel) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": 0, "owned_by": "mosaic-serving", "kind": model.kind.value}


async def models(request: Request) -> Response:
    state: State = request.app.state.frontend
    try:
        served = await state.catalog.refresh()
    except APIError as error:
        return error_response(error)
    data = [_model_object(model) for _, model in sorted(served.items()) if model.ready]
    return json_response({"object": "list", "data": data})


async def model(request: Request) -> Response:
    state: State = request.app.state.frontend
    try:
        return json_response(_model_object(await state.catalog.get(request.path_params["model"])))
    except APIError as error:
        return error_response(error)


async def ready(request: Request) -> Response:
    """200 when Triton is ready (every model loaded), else 503: what a readiness probe asks."""
    state: State = request.app.state.frontend
    try:
        health = await state.client.health()
    except ClientError as error:
        return json_response({"status": "unavailable", "triton": error.message}, 503)
    body = {"status": "ready" if health.ready else "not ready", "triton_live": health.live,
            "triton_ready": health.ready, "models": health.models}
    return json_response(body, 200 if health.ready else 503)


async def live(request: Request) -> Response:
    return json_response({"status": "live"})


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = {404: f"No route {request.method} {request.url.path}",
               405: f"Method {request.method} is not allowed on {request.url.path}"}.get(error.status_code,
                                                                                         str(error.detail))
    return error_response(APIError(error.status_code, message))


class APIKeyCheck:
    """Requests without the key get 401: `Authorization: Bearer KEY` (OpenAI clients) or
    `Authorization: KEY` (MosaicML's mcli sends the bare key)."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        error = APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                         code="invalid_api_key")
        await error_response(error)(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value[7:] if value[:7].lower() == b"bearer " else value
                return hmac.compare_digest(given.strip(), self.key)
        return False


def create_app(settings: Settings) -> ASGIApp:
    """The frontend for `settings`; its Triton client opens on first use, closes at shutdown."""
    state = State(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.frontend = state
        yield
        await state.client.close()

    routes = [
        Route("/health", ready, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model}", model, methods=["GET"]),
        Route("/v1/completions", post(_completions), methods=["POST"]),
        Route("/v1/chat/completions", post(_chat), methods=["POST"]),
        Route("/v1/embeddings", post(_embeddings), methods=["POST"]),
        Route("/v1/images/generations", post(_images), methods=["POST"]),
        Route("/{model}/predict", post(_predict), methods=["POST"]),
        Route("/{model}/predict_stream", post(_predict_stream), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.frontend = state
    return APIKeyCheck(app, settings.api_key) if settings.api_key else app
