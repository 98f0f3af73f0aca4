"""Typed Python client for steerserve's steering API (sync and async, on httpx).

Completions go through the official `openai` client (see `clients.openai_steering`); this client covers what
the OpenAI API has no words for: vectors, presets, experiments and extraction jobs.

    from clients.client import SteerClient
    with SteerClient("http://127.0.0.1:8000", admin_key="...") as steer:
        steer.push_vector("reflection", {19: direction}, defaults={"site": "mlp", "op": "project"})
        steer.set_preset("reflect-up", [{"vector": "reflection", "strength": 0.5}])

Each endpoint is written once, as the HTTP call it makes (`_Endpoints`); `SteerClient` and `AsyncSteerClient`
differ only in how they send a call (blocking or awaited) and in how `wait_job` sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

import httpx
import numpy as np
from pydantic import TypeAdapter

from clients.types import (
    ApiErrorBody,
    Experiment,
    ExperimentReport,
    Job,
    Preset,
    VectorCreated,
    VectorInfo,
)
from steering.extract.request import ExtractionRequest
from steering.spec import SteeringTerm

T = TypeVar("T")
P = ParamSpec("P")
TermLike = SteeringTerm | Mapping[str, Any]
ProgressHook = Callable[[Job], None]


class SteerError(Exception):
    """An error answer from the server, in OpenAI's shape: status, message, type, param, code."""

    def __init__(self, status_code: int, error: ApiErrorBody) -> None:
        super().__init__(
            f"{status_code} {error.type}: {error.message}" + (f" (param {error.param})" if error.param else "")
        )
        self.status_code = status_code
        self.error = error


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One HTTP call and how to read its answer; the sync and async clients only send it."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _model(adapter: TypeAdapter[T]) -> Callable[[httpx.Response], T]:
    return lambda r: adapter.validate_python(r.json())


def _listed(adapter: TypeAdapter[T]) -> Callable[[httpx.Response], list[T]]:
    return lambda r: [adapter.validate_python(item) for item in r.json()["data"]]


_VECTOR = TypeAdapter(VectorInfo)
_CREATED = TypeAdapter(VectorCreated)
_PRESET = TypeAdapter(Preset)
_EXPERIMENT = TypeAdapter(Experiment)
_REPORT = TypeAdapter(ExperimentReport)
_JOB = TypeAdapter(Job)


def _terms(terms: Sequence[TermLike]) -> list[dict[str, Any]]:
    return [SteeringTerm.model_validate(t).model_dump(mode="json", exclude_none=True) for t in terms]


def _b64(direction: Any) -> str:
    data = np.ascontiguousarray(np.asarray(direction, dtype="<f4")).reshape(-1)
    return base64.b64encode(data.tobytes()).decode()


class endpoint(Generic[P, T]):
    """A client method made from a call builder: blocking on `SteerClient`, awaitable on `AsyncSteerClient`."""

    def __init__(self, build: Callable[P, _Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, client: SteerClient, owner: type | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncSteerClient, owner: type | None = None) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __get__(self, client: None, owner: type | None = None) -> endpoint[P, T]: ...

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self
        build, send = self.build, client._send

        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            return send(build(*args, **kwargs))

        method.__doc__ = build.__doc__
        return method


def _push_vector(
    vector_id: str,
    layers: Mapping[int, Any],
    defaults: Mapping[str, Any] | None = None,
    description: str = "",
    provenance: Mapping[str, Any] | None = None,
) -> _Call[VectorCreated]:
    """Store a new version of `vector_id` from {layer: direction} (anything numpy turns into float32)."""
    body: dict[str, Any] = {"id": vector_id, "layers": {str(k): _b64(v) for k, v in layers.items()}}
    if defaults is not None:
        body["defaults"] = dict(defaults)
    if description:
        body["description"] = description
    if provenance:
        body["provenance"] = dict(provenance)
    return _Call("POST", "/v1/steering/vectors", _model(_CREATED), json=body)


def _import_vector(
    vector_id: str,
    file: bytes | str | Path,
    fmt: str | None = None,
    layer: int | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> _Call[VectorCreated]:
    """Store a safetensors, GGUF control-vector or .npy file (bytes or a path) as a new version."""
    data = Path(file).read_bytes() if isinstance(file, (str, Path)) else file
    form = {"id": vector_id}
    if fmt is not None:
        form["format"] = fmt
    if layer is not None:
        form["layer"] = str(layer)
    if defaults is not None:
        form["defaults"] = json.dumps(dict(defaults))
    files = {"file": ("vector", data, "application/octet-stream")}
    return _Call("POST", "/v1/steering/vectors/import", _model(_CREATED), data=form, files=files)


def _export_vector(vector_id: str, fmt: str = "safetensors", version: int | None = None) -> _Call[bytes]:
    """The vector as a file: safetensors, gguf or npy."""
    params: dict[str, Any] = {"format": fmt} | ({"version": version} if version is not None else {})
    return _Call("GET", f"/v1/steering/vectors/{vector_id}/data", lambda r: r.content, params=params)


def _delete(kind: str) -> Callable[[str], _Call[None]]:
    def call(name: str) -> _Call[None]:
        return _Call("DELETE", f"/v1/steering/{kind}/{name}", lambda r: None)

    return call


def _get(path: str, adapter: TypeAdapter[T]) -> Callable[[str], _Call[T]]:
    def call(name: str) -> _Call[T]:
        return _Call("GET", path.format(name), _model(adapter))

    return call


def _list(path: str, adapter: TypeAdapter[T]) -> Callable[[], _Call[list[T]]]:
    def call() -> _Call[list[T]]:
        return _Call("GET", path, _listed(adapter))

    return call


def _set_preset(name: str, steering: Sequence[TermLike], description: str = "") -> _Call[Preset]:
    body = {"steering": _terms(steering), "description": description}
    return _Call("PUT", f"/v1/steering/presets/{name}", _model(_PRESET), json=body)


def _put_experiment(name: str, arms: Sequence[Mapping[str, Any]], description: str = "") -> _Call[Experiment]:
    body = {"arms": [dict(a) for a in arms], "description": description}
    return _Call("PUT", f"/v1/steering/experiments/{name}", _model(_EXPERIMENT), json=body)


def _extract(request: ExtractionRequest | Mapping[str, Any]) -> _Call[Job]:
    """Start an extraction job (see `ExtractionRequest`); `wait_job` follows it."""
    body = ExtractionRequest.model_validate(request).model_dump(mode="json", exclude_none=True)
    return _Call("POST", "/v1/steering/vectors/extract", _model(_JOB), json=body)


def _tokenize(model: str, messages: Sequence[Mapping[str, Any]]) -> _Call[dict[str, Any]]:
    """vLLM's /tokenize of a chat: `count` tokens of the rendered prompt and the served `max_model_len`."""
    body = {"model": model, "messages": [dict(m) for m in messages]}
    return _Call("POST", "/tokenize", lambda r: dict(r.json()), json=body)


class _Endpoints:
    """steerserve's steering API, one line per endpoint."""

    list_vectors = endpoint(_list("/v1/steering/vectors", _VECTOR))
    get_vector = endpoint(_get("/v1/steering/vectors/{}", _VECTOR))
    push_vector = endpoint(_push_vector)
    import_vector = endpoint(_import_vector)
    export_vector = endpoint(_export_vector)
    delete_vector = endpoint(_delete("vectors"))
    list_presets = endpoint(_list("/v1/steering/presets", _PRESET))
    get_preset = endpoint(_get("/v1/steering/presets/{}", _PRESET))
    set_preset = endpoint(_set_preset)
    delete_preset = endpoint(_delete("presets"))
    put_experiment = endpoint(_put_experiment)
    list_experiments = endpoint(_list("/v1/steering/experiments", _EXPERIMENT))
    get_experiment = endpoint(_get("/v1/steering/experiments/{}", _EXPERIMENT))
    experiment_report = endpoint(_get("/v1/steering/experiments/{}/report", _REPORT))
    delete_experiment = endpoint(_delete("experiments"))
    extract = endpoint(_extract)
    get_job = endpoint(_get("/v1/steering/jobs/{}", _JOB))
    tokenize = endpoint(_tokenize)


def _headers(api_key: str | None, admin_key: str | None) -> dict[str, str]:
    key = admin_key or api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def error_of(response: httpx.Response) -> SteerError:
    """The server's own error (OpenAI's shape) of an error answer; its text when it is not in that shape."""
    try:
        error = ApiErrorBody.model_validate(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        error = ApiErrorBody(message=response.text[:500] or response.reason_phrase, type="http_error")
    return SteerError(response.status_code, error)


def _read(call: _Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise error_of(response)
    return call.parse(response)


def _kwargs(call: _Call[Any]) -> dict[str, Any]:
    return {"params": call.params, "json": call.json, "data": call.data, "files": call.files, "headers": call.headers}


class _Waiting:
    """`wait_job`'s clock: poll until the job is done, or raise TimeoutError after `timeout` seconds."""

    def __init__(self, job_id: str, timeout: float | None) -> None:
        self.job_id, self.timeout = job_id, timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def done(self, job: Job, on_progress: ProgressHook | None) -> bool:
        if on_progress is not None:
            on_progress(job)
        if job.done:
            return True
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError(f"job {self.job_id} still {job.status} after {self.timeout} s")
        return False


class SteerClient(_Endpoints):
    """Blocking client. `admin_key` is needed for writes; it also grants API access."""

    def __init__(
        self, base_url: str, api_key: str | None = None, admin_key: str | None = None, timeout: float = 60.0
    ) -> None:
        self.http = httpx.Client(base_url=base_url, headers=_headers(api_key, admin_key), timeout=timeout)

    def __enter__(self) -> SteerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: _Call[T]) -> T:
        return _read(call, self.http.request(call.method, call.path, **_kwargs(call)))

    def wait_job(
        self, job_id: str, poll: float = 1.0, timeout: float | None = None, on_progress: ProgressHook | None = None
    ) -> Job:
        """Poll until the job succeeds or fails (raises TimeoutError after `timeout` seconds)."""
        waiting = _Waiting(job_id, timeout)
        while not waiting.done(job := self.get_job(job_id), on_progress):
            time.sleep(poll)
        return job


class AsyncSteerClient(_Endpoints):
    """The same API for asyncio."""

    def __init__(
        self, base_url: str, api_key: str | None = None, admin_key: str | None = None, timeout: float = 60.0
    ) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key, admin_key), timeout=timeout)

    async def __aenter__(self) -> AsyncSteerClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        return _read(call, await self.http.request(call.method, call.path, **_kwargs(call)))

    async def wait_job(
        self, job_id: str, poll: float = 1.0, timeout: float | None = None, on_progress: ProgressHook | None = None
    ) -> Job:
        """Poll until the job succeeds or fails (raises TimeoutError after `timeout` seconds)."""
        waiting = _Waiting(job_id, timeout)
        while not waiting.done(job := await self.get_job(job_id), on_progress):
            await asyncio.sleep(poll)
        return job
