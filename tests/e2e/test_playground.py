"""The playground in headless Chromium (Debian's, driven by Playwright) against the real server and engine:
type a prompt, move the slider, see two streamed answers and an experiment's report; a screenshot is kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from clients.client import AsyncSteerClient
from tests.e2e.engine_helpers import forcing_direction

pytestmark = pytest.mark.engine
ARTIFACTS = Path(
    os.environ.get("STEERSERVE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / ".cache" / "artifacts")
)


def visible_token(model: Path) -> int:
    """A token that decodes to letters, so the forced answer shows on the page."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    return next(i for i in range(tokenizer.get_vocab_size()) if tokenizer.decode([i]).strip().isalpha())


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is missing: scripts/install.sh --dev installs it")
    return path


async def test_two_streamed_answers_and_a_report_in_chromium(server: str, tiny_llama: Path) -> None:
    from playwright.async_api import async_playwright

    async with AsyncSteerClient(server, admin_key="admin-secret") as steer:
        await steer.push_vector("pg-force", forcing_direction(tiny_llama, visible_token(tiny_llama)))
        await steer.put_experiment("pg-ab", [{"name": "off"}, {"name": "on", "steering": [{"vector": "pg-force"}]}])
    async with httpx.AsyncClient(base_url=server, headers={"Authorization": "Bearer user-secret"}) as http:
        for user in ("ada", "bob", "cy", "dee"):  # some traffic for the report
            body = {"model": "experiment/pg-ab", "prompt": "hi", "max_tokens": 4, "user": user}
            assert (await http.post("/v1/completions", json=body)).status_code == 200
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        await page.goto(f"{server}/playground")
        await page.fill("#api-key", "user-secret")
        await page.click("#load")
        await page.wait_for_function("document.querySelector('#vector').options.length > 1")
        await page.select_option("#vector", "pg-force")
        await page.uncheck("#chat-mode")  # the tiny test model has no chat template
        await page.fill("#max-tokens", "12")
        await page.fill("#prompt", "Once upon a time")
        await page.fill("#strength", "1.5")  # move the slider
        assert await page.text_content("#strength-value") == "1.50"
        await page.click("#run")
        await page.wait_for_selector("#steered-stats[data-done='1']", timeout=60_000)
        await page.wait_for_selector("#plain-stats[data-done='1']", timeout=60_000)
        steered, plain = await page.text_content("#steered-text"), await page.text_content("#plain-text")
        steered_stats = await page.text_content("#steered-stats") or ""
        plain_stats = await page.text_content("#plain-stats") or ""
        assert steered and plain and steered != plain, (steered, plain, steered_stats, plain_stats)
        assert "12 tokens" in steered_stats and "reflection markers" in steered_stats
        assert "@ 1.50" in (await page.text_content("#steered-label") or "")
        await page.select_option("#experiment", "pg-ab")
        await page.click("#report")
        await page.wait_for_selector("#report-plot rect", state="attached")
        report = await page.text_content("#report-table") or ""
        assert "off" in report and "on" in report and await page.locator("#report-plot rect").count() == 4
        await page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
        await browser.close()
    async with AsyncSteerClient(server, admin_key="admin-secret") as steer:
        await steer.delete_experiment("pg-ab")
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000
