"""Extraction jobs: run in the background of one replica, with their state in the registry for every replica.

A job document (kind "extraction_job") moves queued → running → succeeded | failed and carries its progress,
its result (the stored vector id and version, the layer scan, counts) or its error. The running replica
refreshes `updated_at`; a running job not refreshed for `STALE_AFTER` seconds is reported as failed (the
replica that ran it is gone).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from steering.extract.pipeline import run_extraction
from steering.extract.request import ExtractionRequest
from steering.store.base import VectorStore, check_name

logger = logging.getLogger("steerserve.extract")
KIND = "extraction_job"
STALE_AFTER = 300.0


class ExtractionJobs:
    def __init__(
        self,
        engine: Any,
        store: VectorStore,
        fingerprint: Mapping[str, Any],
        on_vector_written: Callable[[str], None] = lambda _id: None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.fingerprint = dict(fingerprint)
        self.on_vector_written = on_vector_written
        self._tasks: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Lock()  # extraction is heavy: one per replica, the rest queue

    def check(self, request: ExtractionRequest) -> None:
        """Refuse what cannot work before a job is created (raises ValueError naming the field)."""
        check_name("vector", request.id)
        layers = self.engine.shape.num_layers
        for layer in request.layers or []:
            if not -layers <= layer < layers:
                raise ValueError(f"layer {layer} does not exist (the model has {layers})")

    async def submit(self, request: ExtractionRequest) -> dict[str, Any]:
        self.check(request)
        now = time.time()
        job_id = f"extract-{uuid.uuid4().hex[:16]}"
        job: dict[str, Any] = {
            "id": job_id,
            "object": "steering.extraction_job",
            "status": "queued",
            "stage": "queued",
            "progress": 0.0,
            "vector_id": request.id,
            "method": request.method,
            "contrast": request.contrast,
            "created_at": now,
            "updated_at": now,
            "result": None,
            "error": None,
        }
        await self.store.put_document(KIND, job_id, job)
        task = asyncio.create_task(self._run(job, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def get(self, job_id: str) -> dict[str, Any] | None:
        job = await self.store.get_document(KIND, job_id)
        if job is not None and job["status"] in ("queued", "running"):
            if time.time() - float(job["updated_at"]) > STALE_AFTER:
                job = {**job, "status": "failed", "error": {"message": "the replica running this job stopped"}}
        return job

    async def list(self) -> list[dict[str, Any]]:
        return await self.store.list_documents(KIND)

    async def _update(self, job: dict[str, Any], **fields: Any) -> None:
        job.update(fields, updated_at=time.time())
        try:
            await self.store.put_document(KIND, job["id"], job)
        except Exception as exc:  # noqa: BLE001 - a registry blip must not kill the job; the next update retries
            logger.warning("extraction job %s: could not save progress (%s)", job["id"], exc)

    async def _run(self, job: dict[str, Any], request: ExtractionRequest) -> None:
        async with self._one_at_a_time:
            try:
                await self._update(job, status="running", stage="starting")

                async def progress(stage: str, fraction: float) -> None:
                    await self._update(job, stage=stage, progress=round(min(1.0, fraction), 4))

                outcome = await run_extraction(self.engine, request, progress)
                num_layers = self.engine.shape.num_layers
                layers = sorted({x % num_layers for x in request.layers or [outcome.recommended_layer]})
                defaults = request.defaults.model_copy(
                    update={
                        "layers": tuple(layers),
                        "condition": request.defaults.condition or outcome.condition_defaults(request, layers),
                    }
                )
                record = await self.store.add_vector(
                    request.id,
                    {layer: outcome.directions[layer] for layer in layers},
                    defaults,
                    request.description or f"{request.method} over {request.contrast} (steerserve extract)",
                    outcome.provenance(request, layers),
                    self.fingerprint,
                )
                self.on_vector_written(request.id)
                result = {
                    "vector": {"id": record.id, "version": record.version, "sha256": record.sha256},
                    "layers": layers,
                    "recommended_layer": outcome.recommended_layer,
                    "counts": outcome.counts,
                    "scan": [s.to_json() for s in outcome.scan],
                    "mean_norm": {str(k): v for k, v in outcome.mean_norms.items()},
                    "condition": defaults.condition.model_dump(mode="json") if defaults.condition else None,
                    # per layer: the balanced accuracy of the stored direction cut at its threshold (the gate a
                    # condition applies), on the extraction's own rows
                    "condition_accuracy": {str(k): round(a, 6) for k, (_, a) in outcome.thresholds.items()},
                }
                await self._update(job, status="succeeded", stage="done", progress=1.0, result=result)
            except Exception as exc:  # noqa: BLE001 - every failure ends in the job's document
                logger.exception("extraction job %s failed", job["id"])
                await self._update(job, status="failed", stage="failed", error={"message": str(exc)})

    async def wait_all(self) -> None:
        """Wait for this replica's jobs (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
