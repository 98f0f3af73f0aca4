"""Typed Python client for steerserve's steering API (sync and async, on httpx).

Completions go through the official `openai` client (see `clients.openai_steering`); this client covers what
the OpenAI API has no words for: vectors, presets, experiments and extraction jobs.

    from clients.client import SteerClient
    with SteerClient("http://127.0.0.1:8000", admin_key="...") as steer:
        steer.push_vector("reflection", {19: direction}, defaults={"site": "mlp", "op": "project"})
        steer.set_preset("reflect-up", [{"vector": "reflection", "strength": 0.5}])
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

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


class _Calls:
    """The calls, named like the client methods."""

    @staticmethod
    def list_vectors() -> _Call[list[VectorInfo]]:
        return _Call("GET", "/v1/steering/vectors", _listed(_VECTOR))

    @staticmethod
    def get_vector(vector_id: str) -> _Call[VectorInfo]:
        return _Call("GET", f"/v1/steering/vectors/{vector_id}", _model(_VECTOR))

    @staticmethod
    def push_vector(
        vector_id: str,
        layers: Mapping[int, Any],
        defaults: Mapping[str, Any] | None,
        description: str,
        provenance: Mapping[str, Any] | None,
    ) -> _Call[VectorCreated]:
        body: dict[str, Any] = {"id": vector_id, "layers": {str(k): _b64(v) for k, v in layers.items()}}
        if defaults is not None:
            body["defaults"] = dict(defaults)
        if description:
            body["description"] = description
        if provenance:
            body["provenance"] = dict(provenance)
        return _Call("POST", "/v1/steering/vectors", _model(_CREATED), json=body)

    @staticmethod
    def import_vector(
        vector_id: str, data: bytes, fmt: str | None, layer: int | None, defaults: Mapping[str, Any] | None
    ) -> _Call[VectorCreated]:
        import json

        form = {"id": vector_id}
        if fmt is not None:
            form["format"] = fmt
        if layer is not None:
            form["layer"] = str(layer)
        if defaults is not None:
            form["defaults"] = json.dumps(dict(defaults))
        files = {"file": ("vector", data, "application/octet-stream")}
        return _Call("POST", "/v1/steering/vectors/import", _model(_CREATED), data=form, files=files)

    @staticmethod
    def export_vector(vector_id: str, fmt: str, version: int | None) -> _Call[bytes]:
        params: dict[str, Any] = {"format": fmt}
        if version is not None:
            params["version"] = version
        return _Call("GET", f"/v1/steering/vectors/{vector_id}/data", lambda r: r.content, params=params)

    @staticmethod
    def delete(kind: str, name: str) -> _Call[None]:
        return _Call("DELETE", f"/v1/steering/{kind}/{name}", lambda r: None)

    @staticmethod
    def list_presets() -> _Call[list[Preset]]:
        return _Call("GET", "/v1/steering/presets", _listed(_PRESET))

    @staticmethod
    def get_preset(name: str) -> _Call[Preset]:
        return _Call("GET", f"/v1/steering/presets/{name}", _model(_PRESET))

    @staticmethod
    def get_experiment(name: str) -> _Call[Experiment]:
        return _Call("GET", f"/v1/steering/experiments/{name}", _model(_EXPERIMENT))

    @staticmethod
    def set_preset(name: str, steering: Sequence[TermLike], description: str) -> _Call[Preset]:
        body = {"steering": _terms(steering), "description": description}
        return _Call("PUT", f"/v1/steering/presets/{name}", _model(_PRESET), json=body)

    @staticmethod
    def put_experiment(name: str, arms: Sequence[Mapping[str, Any]], description: str) -> _Call[Experiment]:
        body = {"arms": [dict(a) for a in arms], "description": description}
        return _Call("PUT", f"/v1/steering/experiments/{name}", _model(_EXPERIMENT), json=body)

    @staticmethod
    def list_experiments() -> _Call[list[Experiment]]:
        return _Call("GET", "/v1/steering/experiments", _listed(_EXPERIMENT))

    @staticmethod
    def experiment_report(name: str) -> _Call[ExperimentReport]:
        return _Call("GET", f"/v1/steering/experiments/{name}/report", _model(_REPORT))

    @staticmethod
    def extract(request: ExtractionRequest | Mapping[str, Any]) -> _Call[Job]:
        body = ExtractionRequest.model_validate(request).model_dump(mode="json", exclude_none=True)
        return _Call("POST", "/v1/steering/vectors/extract", _model(_JOB), json=body)

    @staticmethod
    def get_job(job_id: str) -> _Call[Job]:
        return _Call("GET", f"/v1/steering/jobs/{job_id}", _model(_JOB))


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


class SteerClient:
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

    def list_vectors(self) -> list[VectorInfo]:
        return self._send(_Calls.list_vectors())

    def get_vector(self, vector_id: str) -> VectorInfo:
        return self._send(_Calls.get_vector(vector_id))

    def push_vector(
        self,
        vector_id: str,
        layers: Mapping[int, Any],
        defaults: Mapping[str, Any] | None = None,
        description: str = "",
        provenance: Mapping[str, Any] | None = None,
    ) -> VectorCreated:
        """Store a new version of `vector_id` from {layer: direction} (anything numpy turns into float32)."""
        return self._send(_Calls.push_vector(vector_id, layers, defaults, description, provenance))

    def import_vector(
        self,
        vector_id: str,
        file: bytes | str | Path,
        fmt: str | None = None,
        layer: int | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> VectorCreated:
        """Store a safetensors, GGUF control-vector or .npy file (bytes or a path) as a new version."""
        data = Path(file).read_bytes() if isinstance(file, (str, Path)) else file
        return self._send(_Calls.import_vector(vector_id, data, fmt, layer, defaults))

    def export_vector(self, vector_id: str, fmt: str = "safetensors", version: int | None = None) -> bytes:
        return self._send(_Calls.export_vector(vector_id, fmt, version))

    def delete_vector(self, vector_id: str) -> None:
        self._send(_Calls.delete("vectors", vector_id))

    def list_presets(self) -> list[Preset]:
        return self._send(_Calls.list_presets())

    def get_preset(self, name: str) -> Preset:
        return self._send(_Calls.get_preset(name))

    def set_preset(self, name: str, steering: Sequence[TermLike], description: str = "") -> Preset:
        return self._send(_Calls.set_preset(name, steering, description))

    def delete_preset(self, name: str) -> None:
        self._send(_Calls.delete("presets", name))

    def put_experiment(self, name: str, arms: Sequence[Mapping[str, Any]], description: str = "") -> Experiment:
        return self._send(_Calls.put_experiment(name, arms, description))

    def list_experiments(self) -> list[Experiment]:
        return self._send(_Calls.list_experiments())

    def get_experiment(self, name: str) -> Experiment:
        return self._send(_Calls.get_experiment(name))

    def experiment_report(self, name: str) -> ExperimentReport:
        return self._send(_Calls.experiment_report(name))

    def delete_experiment(self, name: str) -> None:
        self._send(_Calls.delete("experiments", name))

    def extract(self, request: ExtractionRequest | Mapping[str, Any]) -> Job:
        """Start an extraction job (see `ExtractionRequest`); `wait_job` follows it."""
        return self._send(_Calls.extract(request))

    def get_job(self, job_id: str) -> Job:
        return self._send(_Calls.get_job(job_id))

    def wait_job(
        self,
        job_id: str,
        poll: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job succeeds or fails (raises TimeoutError after `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.done:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(poll)


class AsyncSteerClient:
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

    async def list_vectors(self) -> list[VectorInfo]:
        return await self._send(_Calls.list_vectors())

    async def get_vector(self, vector_id: str) -> VectorInfo:
        return await self._send(_Calls.get_vector(vector_id))

    async def push_vector(
        self,
        vector_id: str,
        layers: Mapping[int, Any],
        defaults: Mapping[str, Any] | None = None,
        description: str = "",
        provenance: Mapping[str, Any] | None = None,
    ) -> VectorCreated:
        return await self._send(_Calls.push_vector(vector_id, layers, defaults, description, provenance))

    async def import_vector(
        self,
        vector_id: str,
        file: bytes | str | Path,
        fmt: str | None = None,
        layer: int | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> VectorCreated:
        data = Path(file).read_bytes() if isinstance(file, (str, Path)) else file
        return await self._send(_Calls.import_vector(vector_id, data, fmt, layer, defaults))

    async def export_vector(self, vector_id: str, fmt: str = "safetensors", version: int | None = None) -> bytes:
        return await self._send(_Calls.export_vector(vector_id, fmt, version))

    async def delete_vector(self, vector_id: str) -> None:
        await self._send(_Calls.delete("vectors", vector_id))

    async def list_presets(self) -> list[Preset]:
        return await self._send(_Calls.list_presets())

    async def get_preset(self, name: str) -> Preset:
        return await self._send(_Calls.get_preset(name))

    async def set_preset(self, name: str, steering: Sequence[TermLike], description: str = "") -> Preset:
        return await self._send(_Calls.set_preset(name, steering, description))

    async def delete_preset(self, name: str) -> None:
        await self._send(_Calls.delete("presets", name))

    async def put_experiment(self, name: str, arms: Sequence[Mapping[str, Any]], description: str = "") -> Experiment:
        return await self._send(_Calls.put_experiment(name, arms, description))

    async def list_experiments(self) -> list[Experiment]:
        return await self._send(_Calls.list_experiments())

    async def get_experiment(self, name: str) -> Experiment:
        return await self._send(_Calls.get_experiment(name))

    async def experiment_report(self, name: str) -> ExperimentReport:
        return await self._send(_Calls.experiment_report(name))

    async def delete_experiment(self, name: str) -> None:
        await self._send(_Calls.delete("experiments", name))

    async def extract(self, request: ExtractionRequest | Mapping[str, Any]) -> Job:
        return await self._send(_Calls.extract(request))

    async def get_job(self, job_id: str) -> Job:
        return await self._send(_Calls.get_job(job_id))

    async def wait_job(
        self,
        job_id: str,
        poll: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.done:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            await asyncio.sleep(poll)
