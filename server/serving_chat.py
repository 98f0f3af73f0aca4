"""OpenAI chat completions: the thinking section split into `reasoning_content`, the thinking budget, and the
reflection counts of every response (plain and streaming)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from server.errors import BadRequestError
from server.protocol import ChatCompletionRequest
from server.reasoning import StreamingSplitter
from server.serving import OpenAIServing, Timing, Usage
from server.steering_sources import RequestSteering
from server.thinking import generate_with_budget
from steering.extract.keywords import ReflectionCount


class ChatServing(OpenAIServing):
    """Completions (inherited) and chat completions."""

    # ---- chat ---------------------------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, http: Request, request_id: str) -> Any:
        steering = await self._steering(req, http)
        try:
            messages = [
                {"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in req.messages
            ]
        except ValueError as exc:
            raise BadRequestError(str(exc), param="messages") from None
        prompt = self.engine.render_chat(messages)
        asked = req.max_completion_tokens or req.max_tokens
        room = self._check_length(prompt, asked, "messages")
        budget = self._budget(req)
        self._admit()
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = self._params(req, asked or room, logprobs, None, req.stream)
        base = {"id": f"chatcmpl-{request_id}", "created": int(time.time()), "model": req.model}
        if req.stream:
            return self._stream(self._chat_chunks(req, prompt, params, steering, request_id, base, budget), steering)
        timing = Timing()
        final = await self._until_disconnect(
            http, self._last(self._chat_outputs(prompt, params, steering, request_id, timing, budget))
        )
        usage = Usage(prompt_tokens=len(prompt), reasoning_tokens=0 if self.markers is not None else None)
        if final is None:
            self._record(steering, usage, timing, "aborted")
            return None
        choices = []
        counts: list[ReflectionCount] = []
        for out in final.outputs:
            ids = list(out.token_ids)
            usage.completion_tokens += len(ids)
            message: dict[str, Any] = {"role": "assistant", "content": out.text}
            if self.markers is not None:
                reasoning, content = self._split(out.text)
                message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
                usage.reasoning_tokens = (usage.reasoning_tokens or 0) + self._reasoning_tokens(
                    ids, out.text, reasoning
                )
            counts.append(self._reflection(out.text))
            choices.append(
                {
                    "index": out.index,
                    "message": message,
                    "logprobs": (
                        self._chat_logprobs(ids, out.logprobs, req.top_logprobs or 0) if req.logprobs else None
                    ),
                    "finish_reason": out.finish_reason,
                }
            )
        self._record(steering, usage, timing, "success")
        described = self._observe(
            steering,
            counts,
            [len(o.token_ids) for o in final.outputs],
            usage.reasoning_tokens or 0,
            [o.finish_reason == "length" for o in final.outputs],
            timing,
        )
        body = {
            **base,
            "object": "chat.completion",
            "choices": choices,
            "usage": usage.to_json(),
            "steering": described,
        }
        return JSONResponse(body, headers=self._headers(steering))

    def _budget(self, req: ChatCompletionRequest) -> int | None:
        if req.max_reasoning_tokens is None:
            return None
        if self.markers is None:
            raise BadRequestError("this model has no thinking section to budget", param="max_reasoning_tokens")
        if req.n != 1 or req.logprobs:
            raise BadRequestError(
                "max_reasoning_tokens works with n=1 and without logprobs", param="max_reasoning_tokens"
            )
        return req.max_reasoning_tokens

    def _chat_outputs(
        self,
        prompt: list[int],
        params: Any,
        steering: RequestSteering,
        request_id: str,
        timing: Timing,
        budget: int | None,
    ) -> AsyncIterator[Any]:
        if budget is None or self.markers is None:
            return self._generate(prompt, params, steering, request_id, timing)

        def generate(ids: list[int], p: Any, rid: str) -> AsyncIterator[Any]:
            return self._generate(ids, p, steering, rid, timing)

        stream = params.output_kind.name == "DELTA"
        return generate_with_budget(
            generate,
            prompt,
            params,
            request_id,
            budget,
            self.close_ids,
            self.close_text,
            (self.markers.start, self.markers.end),
            self.opened,
            stream,
        )

    def _chat_logprobs(self, ids: list[int], lps: Any, top_n: int) -> dict[str, Any]:
        content = []
        for token_id, row in zip(ids, lps or [{}] * len(ids), strict=True):
            text = self._token_text(token_id)
            ranked = sorted(row.items(), key=lambda item: -item[1].logprob)[:top_n]
            top = [
                {"token": self._token_text(t), "logprob": lp.logprob, "bytes": list(self._token_text(t).encode())}
                for t, lp in ranked
            ]
            content.append(
                {
                    "token": text,
                    "logprob": row[token_id].logprob if token_id in row else None,
                    "bytes": list(text.encode()),
                    "top_logprobs": top,
                }
            )
        return {"content": content}

    async def _chat_chunks(
        self,
        req: ChatCompletionRequest,
        prompt: list[int],
        params: Any,
        steering: RequestSteering,
        request_id: str,
        base: dict[str, Any],
        budget: int | None,
    ) -> AsyncIterator[dict[str, Any]]:
        timing = Timing()
        usage = Usage(prompt_tokens=len(prompt), reasoning_tokens=0 if self.markers is not None else None)
        status = "aborted"
        chunk = {**base, "object": "chat.completion.chunk"}
        splitters = {k: StreamingSplitter(self.markers, self.opened) for k in range(req.n)} if self.markers else {}
        texts = dict.fromkeys(range(req.n), "")
        ids: dict[int, list[int]] = {k: [] for k in range(req.n)}
        finishes: dict[int, str | None] = {}
        try:
            for k in range(req.n):
                yield {
                    **chunk,
                    "choices": [
                        {
                            "index": k,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            async for output in self._chat_outputs(prompt, params, steering, request_id, timing, budget):
                for out in output.outputs:
                    new_ids = list(out.token_ids)
                    usage.completion_tokens += len(new_ids)
                    texts[out.index] += out.text
                    ids[out.index] += new_ids
                    finishes[out.index] = out.finish_reason
                    delta: dict[str, Any] = {"content": out.text}
                    if splitters:
                        reasoning, content = splitters[out.index].feed(out.text, final=out.finish_reason is not None)
                        delta = {"reasoning_content": reasoning} if reasoning else {}
                        if content or not reasoning:
                            delta["content"] = content
                    logprobs = (
                        self._chat_logprobs(new_ids, out.logprobs, req.top_logprobs or 0) if req.logprobs else None
                    )
                    yield {
                        **chunk,
                        "choices": [
                            {
                                "index": out.index,
                                "delta": delta,
                                "logprobs": logprobs,
                                "finish_reason": out.finish_reason,
                            }
                        ],
                    }
            status = "success"
            if self.markers is not None:
                usage.reasoning_tokens = sum(
                    self._reasoning_tokens(ids[k], texts[k], self._split(texts[k])[0]) for k in texts
                )
            described = self._observe(
                steering,
                [self._reflection(texts[k]) for k in sorted(texts)],
                [len(ids[k]) for k in sorted(ids)],
                usage.reasoning_tokens or 0,
                [finishes.get(k) == "length" for k in sorted(texts)],
                timing,
            )
            if req.stream_options is not None and req.stream_options.include_usage:
                yield {**chunk, "choices": [], "usage": usage.to_json(), "steering": described}
        finally:
            self._record(steering, usage, timing, status)
