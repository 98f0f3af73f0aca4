"""OpenAI completions and chat completions on the steering engine (plain and streaming)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.errors import BadRequestError, OverloadedError, ServiceUnavailableError, error_response
from server.experiments import Experiments
from server.metrics import ServerMetrics
from server.protocol import CompletionRequest, SamplingFields
from server.reasoning import ReasoningMarkers, reflection_of, split_reasoning
from server.steering_sources import HEADER, RequestSteering, SteeringSources
from steering.extract.keywords import ReflectionCount


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int | None = None  # set when the model has a thinking section

    def to_json(self) -> dict[str, Any]:
        total = self.prompt_tokens + self.completion_tokens
        body: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }
        if self.reasoning_tokens is not None:
            body["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return body


@dataclass
class Timing:
    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    gaps: list[float] = field(default_factory=list)

    def token(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        elif self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now


class OpenAIServing:
    def __init__(
        self,
        engine: Any,
        sources: SteeringSources,
        metrics: ServerMetrics,
        served_model: str,
        max_in_flight: int,
        markers: ReasoningMarkers | None = None,
        experiments: Experiments | None = None,
    ) -> None:
        self.engine = engine
        self.sources = sources
        self.metrics = metrics
        self.served_model = served_model
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.draining = False  # set on SIGTERM: new generation requests get 503 while in-flight ones finish
        self.markers = markers
        self.experiments = experiments
        self.opened = False  # the chat template itself opens the thinking section (R1 style)
        self.close_ids: list[int] = []  # what a thinking budget appends to close an open section
        self.close_text = ""
        self._end_id: int | None = None
        if markers is not None:
            probe = engine.render_chat([{"role": "user", "content": "x"}])
            self.opened = str(engine.tokenizer.decode(probe)).rstrip().endswith(markers.start)
            self.close_ids = list(engine.tokenizer.encode(f"\n\n{markers.end}\n", add_special_tokens=False))
            self.close_text = str(engine.tokenizer.decode(self.close_ids))
            end_ids = engine.tokenizer.encode(markers.end, add_special_tokens=False)
            self._end_id = int(end_ids[0]) if len(end_ids) == 1 else None

    # ---- shared -------------------------------------------------------------------------------------------
    async def _steering(self, req: SamplingFields, http: Request) -> RequestSteering:
        problem = req.extra_field_problem()
        if problem is not None:
            if problem.lower().startswith("steer"):
                raise BadRequestError(f"unknown steering field {problem!r} (use 'steering')", param=problem)
            raise BadRequestError(f"field {problem!r} is not supported by this server", param=problem)
        return await self.sources.for_request(
            req.model, req.steering, http.headers.get(HEADER), req.experiment, req.user
        )

    def _sectioned(self, text: str) -> str:
        """An output as the thinking split reads it: with the start marker the chat template already wrote."""
        return self.markers.start + text if self.markers is not None and self.opened else text

    def _split(self, text: str) -> tuple[str | None, str]:
        """(reasoning, content) of a finished output (call only when markers are set)."""
        assert self.markers is not None
        return split_reasoning(self._sectioned(text), self.markers)

    def _reasoning_tokens(self, ids: list[int], text: str, reasoning: str | None) -> int:
        """Tokens of the thinking section (`reasoning`, from `_split`), its end marker included."""
        if self.markers is None or reasoning is None:
            return 0
        if self._end_id is not None and self._end_id in ids:
            return ids.index(self._end_id) + 1
        if self.markers.end not in text:
            return len(ids)
        return len(self.engine.tokenizer.encode(reasoning, add_special_tokens=False))

    def _reflection(self, text: str) -> ReflectionCount:
        return reflection_of(self._sectioned(text), self.markers)

    def _observe(
        self,
        steering: RequestSteering,
        counts: list[ReflectionCount],
        tokens: list[int],
        reasoning_tokens: int,
        truncated: list[bool],
        timing: Timing,
    ) -> dict[str, Any]:
        """Reflection metrics and experiment tallies of one finished response; returns its `steering` object."""
        labels = (steering.label, steering.arm_label)
        m = self.metrics
        for count in counts:
            m.responses.labels(*labels).inc()
            if count.reflected:
                m.responses_with_reflection.labels(*labels).inc()
            m.reflection_markers.labels(*labels, "reasoning").inc(count.reasoning)
            m.reflection_markers.labels(*labels, "content").inc(count.content)
        for n in tokens:
            m.completion_tokens_per_response.labels(*labels).observe(n)
        m.reasoning_tokens.labels(*labels).inc(reasoning_tokens)
        latency = time.perf_counter() - timing.start
        if self.experiments is not None and steering.experiment and steering.arm:
            for count, n, cut in zip(counts, tokens, truncated, strict=True):
                self.experiments.record(steering.experiment, steering.arm, n, latency, count.total, cut)
        body = steering.describe()
        body["reflection"] = {
            "markers": sum(c.total for c in counts),
            "markers_reasoning": sum(c.reasoning for c in counts),
            "markers_content": sum(c.content for c in counts),
            "responses_with_reflection": sum(c.reflected for c in counts),
            "per_choice": [c.total for c in counts],
        }
        return body

    def _params(
        self,
        req: SamplingFields,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None,
        stream: bool,
    ) -> Any:
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        schema = None
        json_object = False
        if req.response_format is not None and req.response_format.type != "text":
            if req.response_format.type == "json_schema":
                body = req.response_format.json_schema or {}
                schema = body.get("schema", body)
                if not isinstance(schema, dict):
                    raise BadRequestError(
                        "response_format.json_schema.schema must be an object", param="response_format"
                    )
            else:
                json_object = True
        try:
            return self.engine.sampling_params(
                stream=stream,
                json_schema=schema,
                json_object=json_object,
                n=req.n,
                max_tokens=max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                top_k=req.top_k,
                min_p=req.min_p,
                seed=req.seed,
                stop=stop,
                stop_token_ids=req.stop_token_ids,
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                repetition_penalty=req.repetition_penalty,
                logit_bias={int(k): v for k, v in req.logit_bias.items()} if req.logit_bias else None,
                ignore_eos=req.ignore_eos,
                min_tokens=req.min_tokens,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
            )
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None

    def _check_length(self, prompt: list[int], max_tokens: int | None, param: str) -> int:
        limit = self.engine.max_model_len
        if len(prompt) >= limit:
            raise BadRequestError(f"prompt has {len(prompt)} tokens; the model's context is {limit}", param=param)
        room = limit - len(prompt)
        if max_tokens is not None and max_tokens > room:
            raise BadRequestError(
                f"max_tokens {max_tokens} + prompt {len(prompt)} tokens exceed the context of {limit}",
                param="max_tokens",
            )
        return int(room)

    def _admit(self) -> None:
        if self.draining:
            raise ServiceUnavailableError("server is shutting down; retry", headers={"Retry-After": "1"})
        if self.in_flight >= self.max_in_flight:
            raise OverloadedError("server overloaded, retry later", headers={"Retry-After": "1"})

    def _record(self, steering: RequestSteering, usage: Usage, timing: Timing, status: str) -> None:
        labels = ("true" if steering.steered else "false", steering.label)
        m = self.metrics
        m.requests.labels(*labels, status).inc()
        m.e2e.labels(*labels).observe(time.perf_counter() - timing.start)
        if timing.first is not None:
            m.ttft.labels(*labels).observe(timing.first - timing.start)
        for gap in timing.gaps:
            m.itl.labels(*labels).observe(gap)
        m.prompt_tokens.labels(*labels).inc(usage.prompt_tokens)
        m.generation_tokens.labels(*labels).inc(usage.completion_tokens)

    def _headers(self, steering: RequestSteering) -> dict[str, str]:
        headers = {"X-Steering-Config": steering.header_value}
        if steering.experiment and steering.arm:
            headers["X-Steering-Arm"] = steering.arm
        return headers

    async def _generate(
        self, prompt: list[int], params: Any, steering: RequestSteering, request_id: str, timing: Timing
    ) -> AsyncIterator[Any]:
        self.in_flight += 1
        self.metrics.running.inc()
        try:
            engine_id = f"{request_id}-{uuid.uuid4().hex[:8]}"  # clients may reuse X-Request-Id
            async for output in self.engine.generate(prompt, params, engine_id, steering.spec):
                timing.token()
                yield output
        except ValueError as exc:  # vLLM's input checks
            raise BadRequestError(str(exc)) from None
        finally:
            self.in_flight -= 1
            self.metrics.running.dec()

    @staticmethod
    async def _last(outputs: AsyncIterator[Any]) -> Any:
        """The final output of a non-streaming generation (None if it yielded nothing)."""
        final = None
        async for output in outputs:
            final = output
        return final

    async def _until_disconnect(self, http: Request, work: Any) -> Any:
        """Run `work`; cancel it (aborting its engine requests) if the client goes away."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.2)
                if done:
                    return task.result()
                if await http.is_disconnected():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    return None
        finally:
            if not task.done():
                task.cancel()

    def _token_text(self, token_id: int) -> str:
        return str(self.engine.tokenizer.decode([token_id]))

    # ---- completions --------------------------------------------------------------------------------------
    def _completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        prompt = req.prompt
        tokenizer = self.engine.tokenizer
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            items = [prompt]
        else:
            items = list(prompt)
        if not items:
            raise BadRequestError("prompt must not be empty", param="prompt")
        out: list[list[int]] = []
        for item in items:
            ids = tokenizer.encode(item) if isinstance(item, str) else [int(t) for t in item]
            if not ids:
                raise BadRequestError("prompt must not be empty", param="prompt")
            if any(not 0 <= t < self.engine.shape.vocab_size for t in ids):
                raise BadRequestError("prompt token id outside the vocabulary", param="prompt")
            out.append(ids)
        return out

    async def completion(self, req: CompletionRequest, http: Request, request_id: str) -> Any:
        steering = await self._steering(req, http)
        prompts = self._completion_prompts(req)
        max_tokens = req.max_tokens if req.max_tokens is not None else 16
        for ids in prompts:
            self._check_length(ids, max_tokens, "prompt")
        self._admit()
        echo_logprobs = req.logprobs if (req.echo and req.logprobs is not None) else None
        params = self._params(req, max_tokens, req.logprobs, echo_logprobs, req.stream)
        created = int(time.time())
        base = {"id": f"cmpl-{request_id}", "object": "text_completion", "created": created, "model": req.model}
        if req.stream:
            return self._stream(self._completion_chunks(req, prompts, params, steering, request_id, base), steering)
        timing = Timing()
        finals = await self._until_disconnect(
            http,
            asyncio.gather(
                *(
                    self._last(self._generate(p, params, steering, f"{request_id}-{i}", timing))
                    for i, p in enumerate(prompts)
                )
            ),
        )
        usage = Usage()
        if finals is None:
            self._record(steering, usage, timing, "aborted")
            return None
        choices = []
        counts: list[ReflectionCount] = []
        lengths: list[int] = []
        cuts: list[bool] = []
        for pi, (ids, final) in enumerate(zip(prompts, finals, strict=True)):
            usage.prompt_tokens += len(ids)
            for out in final.outputs:
                usage.completion_tokens += len(out.token_ids)
                counts.append(self._reflection(out.text))
                lengths.append(len(out.token_ids))
                cuts.append(out.finish_reason == "length")
                text = (self.engine.tokenizer.decode(ids) if req.echo else "") + out.text
                logprobs = None
                if req.logprobs is not None:
                    logprobs = self._legacy_logprobs(
                        ids if req.echo else [],
                        final.prompt_logprobs if req.echo else None,
                        list(out.token_ids),
                        out.logprobs,
                    )
                choices.append(
                    {
                        "index": pi * req.n + out.index,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": out.finish_reason,
                    }
                )
        self._record(steering, usage, timing, "success")
        described = self._observe(steering, counts, lengths, 0, cuts, timing)
        body = {**base, "choices": choices, "usage": usage.to_json(), "steering": described}
        return JSONResponse(body, headers=self._headers(steering))

    def _legacy_logprobs(self, prompt_ids: list[int], prompt_lps: Any, ids: list[int], lps: Any) -> dict[str, Any]:
        tokens: list[str] = []
        token_lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        offset = 0
        rows = list(zip(prompt_ids, prompt_lps or [None] * len(prompt_ids), strict=True))
        rows += list(zip(ids, lps or [None] * len(ids), strict=True))
        for token_id, row in rows:
            text = self._token_text(token_id)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if row is None:
                token_lps.append(None)
                tops.append(None)
                continue
            token_lps.append(row[token_id].logprob if token_id in row else None)
            tops.append({self._token_text(t): lp.logprob for t, lp in row.items()})
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}

    async def _completion_chunks(
        self,
        req: CompletionRequest,
        prompts: list[list[int]],
        params: Any,
        steering: RequestSteering,
        request_id: str,
        base: dict[str, Any],
    ) -> AsyncIterator[dict[str, Any]]:
        timing = Timing()
        usage = Usage(prompt_tokens=sum(len(p) for p in prompts))
        status = "aborted"
        texts: dict[int, str] = {}
        lengths: dict[int, int] = {}
        finishes: dict[int, str | None] = {}
        queue: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue()

        async def pump(pi: int, ids: list[int]) -> None:
            async for output in self._generate(ids, params, steering, f"{request_id}-{pi}", timing):
                await queue.put((pi, output))

        async def merged() -> AsyncIterator[tuple[int, Any]]:
            if len(prompts) == 1:  # the common case: no fan-in task per request
                async for output in self._generate(prompts[0], params, steering, f"{request_id}-0", timing):
                    yield 0, output
                return
            tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(prompts)]
            done = asyncio.ensure_future(asyncio.gather(*tasks))
            done.add_done_callback(lambda _: queue.put_nowait(None))
            try:
                while (item := await queue.get()) is not None:
                    yield item
                await done
            finally:
                for task in tasks:
                    task.cancel()

        try:
            if req.echo:
                for pi, ids in enumerate(prompts):
                    for k in range(req.n):
                        yield {
                            **base,
                            "choices": [
                                {
                                    "index": pi * req.n + k,
                                    "text": self.engine.tokenizer.decode(ids),
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ],
                        }
            async for pi, output in merged():
                for out in output.outputs:
                    usage.completion_tokens += len(out.token_ids)
                    key = pi * req.n + out.index
                    texts[key] = texts.get(key, "") + out.text
                    lengths[key] = lengths.get(key, 0) + len(out.token_ids)
                    finishes[key] = out.finish_reason
                    logprobs = (
                        self._legacy_logprobs([], None, list(out.token_ids), out.logprobs)
                        if req.logprobs is not None
                        else None
                    )
                    yield {
                        **base,
                        "choices": [
                            {
                                "index": pi * req.n + out.index,
                                "text": out.text,
                                "logprobs": logprobs,
                                "finish_reason": out.finish_reason,
                            }
                        ],
                    }
            status = "success"
            keys = sorted(texts)
            described = self._observe(
                steering,
                [self._reflection(texts[k]) for k in keys],
                [lengths[k] for k in keys],
                0,
                [finishes[k] == "length" for k in keys],
                timing,
            )
            if req.stream_options is not None and req.stream_options.include_usage:
                yield {**base, "choices": [], "usage": usage.to_json(), "steering": described}
        finally:
            self._record(steering, usage, timing, status)

    def _stream(self, chunks: AsyncIterator[dict[str, Any]], steering: RequestSteering) -> StreamingResponse:
        async def sse() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk)}\n\n"
            except Exception as exc:  # noqa: BLE001 - an error after the headers went out: report it in-stream
                yield f"data: {bytes(error_response(exc).body).decode()}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers=self._headers(steering))
