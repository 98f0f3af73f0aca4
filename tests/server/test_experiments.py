"""A/B experiments through the routes (fake engine, embedded store): arms, stickiness, report, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.server.test_routes import assert_error, make_client, upload


async def test_experiment_arms_sticky_assignment_and_report(tmp_path: Path) -> None:
    c, engine, app = await make_client(tmp_path)
    async with app.router.lifespan_context(app):
        assert (await c.post("/v1/steering/vectors", json=upload())).status_code == 201
        arms = [
            {"name": "control", "steering": None, "weight": 1},
            {"name": "up", "steering": [{"vector": "r", "strength": 0.5}], "weight": 1},
        ]
        put = await c.put("/v1/steering/experiments/refl", json={"arms": arms, "description": "d"})
        assert put.status_code == 200 and put.json()["model"] == "experiment/refl"
        models = [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
        assert "experiment/refl" in models
        seen: dict[str, set[str]] = {}
        for i in range(40):
            user = f"user-{i % 8}"
            body: dict[str, Any] = {"prompt": "hi", "max_tokens": 3, "user": user}
            if i % 2:
                body["model"] = "experiment/refl"
            else:
                body |= {"model": "base", "experiment": "refl"}
            response = await c.post("/v1/completions", json=body)
            assert response.status_code == 200, response.text
            steering = response.json()["steering"]
            assert steering["experiment"] == "refl" and response.headers["x-steering-arm"] == steering["arm"]
            assert (steering["config_hash"] is None) == (steering["arm"] == "control")
            seen.setdefault(user, set()).add(steering["arm"])
        assert all(len(arms_of_user) == 1 for arms_of_user in seen.values())  # sticky per user
        assert {a for s in seen.values() for a in s} == {"control", "up"}
        report = (await c.get("/v1/steering/experiments/refl/report")).json()
        by_arm = {a["name"]: a for a in report["arms"]}
        assert sum(a["requests"] for a in by_arm.values()) == 40
        for arm in by_arm.values():
            assert arm["mean_completion_tokens"] == 3 and arm["median_completion_tokens"] == 3
            assert arm["reflection_rate"] == 0 and arm["truncation_rate"] == 1
        metrics = (await c.get("/metrics")).text
        assert 'steerserve:responses_total{arm="refl/up"' in metrics
        # errors: other steering with an experiment, unknown experiment, bad arms
        both = {"model": "experiment/refl", "prompt": "x", "steering": [{"vector": "r"}]}
        assert_error(await c.post("/v1/completions", json=both), 400, "experiment")
        assert_error(await c.post("/v1/completions", json={"model": "experiment/nope", "prompt": "x"}), 404)
        dup = {"arms": [{"name": "a"}, {"name": "a"}]}
        assert_error(await c.put("/v1/steering/experiments/x", json=dup), 400)
        unknown = {"arms": [{"name": "a", "steering": [{"vector": "missing"}]}]}
        assert_error(await c.put("/v1/steering/experiments/x", json=unknown), 404)
        assert_error(await c.put("/v1/steering/experiments/bad%20name", json={"arms": [{"name": "a"}]}), 400)
        assert (await c.delete("/v1/steering/experiments/refl")).status_code == 200
        assert_error(await c.get("/v1/steering/experiments/refl/report"), 404)
        assert len(engine.seen) == 40
    await c.aclose()


async def test_experiment_writes_need_the_admin_key(tmp_path: Path) -> None:
    c, _, app = await make_client(tmp_path, api_key="k", admin_key="adm")
    async with app.router.lifespan_context(app):
        body = {"arms": [{"name": "a"}]}
        user = {"Authorization": "Bearer k"}
        assert_error(await c.put("/v1/steering/experiments/e", json=body, headers=user), 403)
        assert (
            await c.put("/v1/steering/experiments/e", json=body, headers={"Authorization": "Bearer adm"})
        ).status_code == 200
        assert (await c.get("/v1/steering/experiments/e/report", headers=user)).status_code == 200
        assert_error(await c.get("/v1/steering/experiments/e/report"), 401)
        assert_error(
            await c.post("/v1/steering/vectors/extract", json={"id": "v", "problems": ["1+1"]}, headers=user), 403
        )
    await c.aclose()


async def test_extraction_job_errors_and_failure_state(tmp_path: Path) -> None:
    """Bad requests are 400 before a job exists; a job that fails says why in its document (the fake engine
    cannot capture activations, so the job fails)."""
    import asyncio

    c, _, app = await make_client(tmp_path)
    async with app.router.lifespan_context(app):
        two = {"id": "v", "problems": ["1+1"], "traces": [{"prompt": "a", "completion": "b"}]}
        assert_error(await c.post("/v1/steering/vectors/extract", json=two), 400)
        assert_error(
            await c.post("/v1/steering/vectors/extract", json={"id": "v", "problems": ["1"], "layers": [9]}),
            400,
            "layers",
        )
        assert_error(await c.post("/v1/steering/vectors/extract", json={"id": "bad/id", "problems": ["1"]}), 400)
        assert_error(await c.get("/v1/steering/jobs/extract-nope"), 404)
        created = await c.post("/v1/steering/vectors/extract", json={"id": "v", "positive": ["a"], "negative": ["b"]})
        assert created.status_code == 202 and created.headers["location"].endswith(created.json()["id"])
        await app.state.steerserve.jobs.wait_all()
        await asyncio.sleep(0)
        job = (await c.get(f"/v1/steering/jobs/{created.json()['id']}")).json()
        assert job["status"] == "failed" and job["error"]["message"]
        assert [j["id"] for j in (await c.get("/v1/steering/jobs")).json()["data"]] == [job["id"]]
        assert (await c.get("/v1/steering/vectors/v")).status_code == 404  # nothing half-written
    await c.aclose()
