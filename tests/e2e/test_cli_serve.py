"""`steerserve serve` as a user runs it: no arguments but a port and data dir (the bundled toy demo reasoning model,
its reflection vector and presets, the embedded store)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.fixtures.processes import free_port

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


def start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("steerserve") or str(Path(sys.executable).with_name("steerserve"))
    env = {**os.environ, "STEERSERVE_DATA_DIR": str(data_dir), "VLLM_CPU_KVCACHE_SPACE": "1"}
    return subprocess.Popen(
        [exe, "serve", "--port", str(port), "--enforce-eager", "--max-model-len", "512"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def start_plain_vllm(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """The README's plain-vLLM way: vLLM's own entry point, both plugins allow-listed, settings from the env."""
    from steering.models import DEMO_DIR, DEMO_NAME, DEMO_REASONING_PARSER

    env = {
        **os.environ,
        "VLLM_PLUGINS": "steerserve,steerserve_api",
        "STEERSERVE_DATA_DIR": str(data_dir),
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(DEMO_DIR),
        "--served-model-name", DEMO_NAME, "--dtype", "float32", "--reasoning-parser", DEMO_REASONING_PARSER,
        "--port", str(port), "--enforce-eager", "--max-model-len", "512", "--shutdown-timeout", "30",
        "--additional-config", '{"steerserve": {}}',
    ]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def assert_plain_vllm_steers_and_budgets_thinking(url: str) -> None:
    """On plain vLLM: the presets are models, a preset steers, and vLLM's `thinking_token_budget` (enabled by
    `--reasoning-parser`) cuts the toy's thinking section to the budget, steered or not."""
    models = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert {"steerserve-demo", "reflect-up", "reflect-down"} <= set(models), models
    question = [{"role": "user", "content": "37+48-19"}]
    budget = 6
    for model in ("steerserve-demo", "reflect-up"):
        reasoning = {}
        for limit in (None, budget):
            body: dict[str, object] = {"model": model, "messages": question, "max_tokens": 384, "temperature": 0}
            if limit is not None:
                body["thinking_token_budget"] = limit
            answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            data = answer.json()
            assert (data["steering"]["preset"] == "reflect-up") == (model == "reflect-up")
            reasoning[limit] = data["choices"][0]["message"]["reasoning"]
        counted = httpx.post(
            f"{url}/tokenize",
            json={"model": "steerserve-demo", "prompt": reasoning[budget], "add_special_tokens": False},
        ).json()["count"]
        assert 0 < counted <= budget < len(reasoning[None]), (model, reasoning)
        assert reasoning[None].startswith(reasoning[budget]), (model, reasoning)  # cut, not changed (greedy)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"server exited early:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not ready:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


def readme_examples() -> list[tuple[str, str]]:
    """The README's fenced blocks marked `bash run` / `python run`, in order."""
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```(bash|python) run\n(.*?)^```", text, re.S | re.M)


def run_readme_examples(port: int, workdir: Path) -> None:
    """Run every README example against this server, in a fresh folder, with the venv's tools on PATH."""
    workdir.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "STEERSERVE_URL": f"http://127.0.0.1:{port}",  # the CLI's --base-url
    }
    blocks = readme_examples()
    assert len(blocks) >= 4 and {lang for lang, _ in blocks} == {"bash", "python"}
    for lang, code in blocks:
        code = code.replace("localhost:8000", f"127.0.0.1:{port}").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False)
        shown = f"README example failed:\n{code}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}"
        assert done.returncode == 0 and '"error"' not in done.stdout, shown


def test_plain_vllm_then_serve_defaults_share_the_store_drain_and_die_loudly(tmp_path: Path) -> None:
    """Two servers on one data dir: plain vLLM with both plugins (writes a vector, steers, drains on SIGTERM and
    exits 0), then `steerserve serve` with its defaults (the vector survived the restart; the demo, its presets,
    the README's examples and the CLI), whose engine core is then killed: the server exits non-zero."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    hidden = 256
    proc = start_plain_vllm(tmp_path / "data", port, log)  # the README's plain-vLLM way, settings from the env
    try:
        wait_ready(url, proc, log)
        data = base64.b64encode(np.ones(hidden, dtype="<f4").tobytes()).decode()
        created = httpx.post(f"{url}/v1/steering/vectors", json={"id": "kept", "layers": {"1": data}})
        assert created.status_code == 201, created.text
        assert_plain_vllm_steers_and_budgets_thinking(url)
        assert_sigterm_drains(url, proc, log)
    finally:
        if proc.poll() is None:
            stop(proc)
    proc = start(tmp_path / "data", port, log)
    try:
        wait_ready(url, proc, log)
        info = httpx.get(f"{url}/v1/steering/vectors/kept")  # the embedded store survived the restart
        assert info.status_code == 200 and info.json()["version"] == 1
        assert_serve_defaults(url)
        out = httpx.post(
            f"{url}/v1/completions",
            timeout=60,
            json={"model": "steerserve-demo", "prompt": "Q: 1+2", "max_tokens": 4, "steering": [{"vector": "kept"}]},
        )
        assert out.status_code == 200 and out.json()["steering"]["terms"][0]["vector"] == "kept"
        run_readme_examples(port, tmp_path / "docs")
        assert_cli_fits_the_model_and_shows_server_errors(url, tmp_path)
        assert_engine_death_ends_the_server(url, proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()


def assert_serve_defaults(url: str) -> None:
    """No model given: the toy demo, its reflection vector and presets; it thinks, then answers; a reasoning
    budget ramps the reflect-down preset in."""
    listed = httpx.get(f"{url}/v1/models").json()["data"]
    models = [m["id"] for m in listed]
    assert models[0] == "steerserve-demo" and {"reflect-up", "reflect-down"} <= set(models)
    assert "toy" in listed[0]["description"] and all("toy" in m["description"] for m in listed[1:])
    reflection = httpx.get(f"{url}/v1/steering/vectors/reflection").json()
    assert reflection["provenance"]["method"] == "diffmean" and reflection["provenance"]["scan"]
    chats = {}
    for preset in ("steerserve-demo", "reflect-up", "reflect-down"):
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=60,
            json={"model": preset, "messages": [{"role": "user", "content": "37+48-19"}], "max_tokens": 384},
        )
        assert answer.status_code == 200, answer.text
        chats[preset] = answer.json()
    message = chats["steerserve-demo"]["choices"][0]["message"]
    assert message["reasoning"] and "Answer:" in message["content"]  # the toy thinks, then answers
    assert chats["reflect-up"]["steering"]["preset"] == "reflect-up"
    assert chats["steerserve-demo"]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    budgeted = httpx.post(  # the reflect-down preset ramped in over a budget of 64 thinking tokens
        f"{url}/v1/chat/completions",
        timeout=60,
        json={
            "model": "steerserve-demo",
            "messages": [{"role": "user", "content": "37+48-19"}],
            "max_tokens": 384,
            "reasoning_budget": 64,
        },
    )
    assert budgeted.status_code == 200, budgeted.text
    (term,) = budgeted.json()["steering"]["terms"]
    assert term["schedule"]["points"] == [[0, -0.75], [64, -3.0]] and term["vector"] == "reflection"


def assert_engine_death_ends_the_server(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """The engine core killed under a stream: the stream ends with an error (or a cut), nothing hangs, and the
    server exits non-zero within seconds so that a supervisor (compose `restart:`, Kubernetes) restarts it."""
    import psutil

    body = {"model": "steerserve-demo", "prompt": "Q: 5+5", "max_tokens": 400, "ignore_eos": True, "stream": True}
    started, lines = threading.Event(), []

    def stream() -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    started.set()
        except httpx.HTTPError as exc:
            lines.append(f"transport error: {exc}")
        started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(60)
    cores = [p for p in psutil.Process(proc.pid).children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
    cores = cores or psutil.Process(proc.pid).children(recursive=False)
    assert cores, "no engine core process found"
    for core in cores:
        core.kill()
    reader.join(60)
    assert not reader.is_alive(), "the stream hung after the engine died"
    assert not any('"finish_reason":"length"' in line for line in lines), "the stream finished as if nothing happened"
    code = proc.wait(timeout=60)
    assert code != 0, log.read_text()[-3000:]


def steerserve_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("steerserve") or str(Path(sys.executable).with_name("steerserve"))
    env = {**os.environ, "STEERSERVE_URL": url}
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def assert_cli_fits_the_model_and_shows_server_errors(url: str, tmp_path: Path) -> None:
    """`ab run` with its default --max-tokens fits the toy's 512-token context; an error answer is the server's
    own message with exit code 1 and no traceback, from the A/B runner (raw httpx) and the typed client alike."""
    ab = ["ab", "run", "--base-url", url, "--limit", "4", "--strengths=-0.5,0.5", "--random-strengths=", "--json"]
    fitted = steerserve_cli(url, *ab, "--out", str(tmp_path / "ab"))
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    summary = json.loads(fitted.stdout)
    assert [a["n"] for a in summary["arms"]] == [4, 4, 4]
    too_long = steerserve_cli(url, *ab, "--max-tokens", "600", "--out", str(tmp_path / "ab-long"))
    assert too_long.returncode == 1 and "Traceback" not in too_long.stderr, too_long.stderr[-2000:]
    assert "600" in too_long.stderr and "512" in too_long.stderr, too_long.stderr  # vLLM's own context message
    missing = steerserve_cli(url, "vectors", "show", "no-such-vector")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr[-2000:]
    assert "404" in missing.stderr and "no-such-vector" in missing.stderr, missing.stderr


def assert_sigterm_drains(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM mid-stream: the stream finishes, new requests are refused, then the process exits 0."""
    body = {
        "model": "steerserve-demo",
        "prompt": "Q: 5+5",
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started, chunks = threading.Event(), []

    def stream() -> None:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(line)
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(60)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    quick = {**body, "stream": False, "max_tokens": 2}
    quick.pop("stream_options")
    refused = httpx.post(f"{url}/v1/completions", json=quick, timeout=30)
    # vLLM's drain mode (`--shutdown-timeout`): the engine takes no new request (vLLM answers 500, not 503)
    assert refused.status_code >= 500 and set(refused.json()["error"]) == {"message", "type", "param", "code"}
    reader.join(120)
    usage = [json.loads(c[6:])["usage"] for c in chunks if json.loads(c[6:]).get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 400, f"the stream was cut during the drain: {usage}"
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
