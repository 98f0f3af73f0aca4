"""Thin routes of the reflection workflow: extraction jobs and A/B experiments (state lives in the registry)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from server.routes import ERRORS, admin_key, api_key
from server.state import state_of
from steering.errors import BadRequestError, NotFoundError
from steering.experiments import ExperimentBody
from steering.extract.request import ExtractionRequest

workflow = APIRouter(prefix="/v1/steering", dependencies=[Depends(api_key)], responses=ERRORS)


@workflow.post("/vectors/extract", status_code=202, dependencies=[Depends(admin_key)])
async def extract_vector(body: ExtractionRequest, request: Request) -> JSONResponse:
    jobs = state_of(request).jobs
    try:
        job = await jobs.submit(body)
    except ValueError as exc:
        raise BadRequestError(str(exc), param="layers" if "layer" in str(exc) else "id") from None
    return JSONResponse(job, status_code=202, headers={"Location": f"/v1/steering/jobs/{job['id']}"})


@workflow.get("/jobs")
async def list_jobs(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await state_of(request).jobs.list()}


@workflow.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    job = await state_of(request).jobs.get(job_id)
    if job is None:
        raise NotFoundError(f"job {job_id!r} does not exist", param="job_id")
    return job


@workflow.put("/experiments/{name}", dependencies=[Depends(admin_key)])
async def put_experiment(name: str, body: ExperimentBody, request: Request) -> dict[str, Any]:
    state = state_of(request)
    for arm in body.arms:  # every arm's vectors, presets and limits are checked now, not at request time
        if arm.steering is not None:
            await state.sources.for_request(state.served_model, arm.steering, None)
    return await state.experiments.put(name, body)


@workflow.get("/experiments")
async def list_experiments(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await state_of(request).experiments.list()}


@workflow.get("/experiments/{name}")
async def get_experiment(name: str, request: Request) -> dict[str, Any]:
    return await state_of(request).experiments.get(name)


@workflow.get("/experiments/{name}/report")
async def experiment_report(name: str, request: Request) -> dict[str, Any]:
    experiments = state_of(request).experiments
    await experiments.flush()  # this replica's own tallies still in flight
    return await experiments.report(name)


@workflow.delete("/experiments/{name}", dependencies=[Depends(admin_key)])
async def delete_experiment(name: str, request: Request) -> dict[str, Any]:
    await state_of(request).experiments.delete(name)
    return {"name": name, "deleted": True}
