"""The seed method on a real pretrained model: SmolLM2-135M-Instruct, reflection-inducing probing, A/B.

The seed paper finds reflection rare in pretrained models and raises it by Reflection-Inducing Probing (RIP):
reflection-triggering text is injected into the model's own partial answers. This driver runs the existing
workflow end to end against a running server (`steerserve serve --model smollm2-135m-instruct`):

  1. generated word problems (one or two arithmetic steps, small integers), an extraction split and an
     evaluation split that share no problem;
  2. RIP traces on the extraction split: the model answers step by step (temperature 0.7); the answer is cut
     after a random step, a reflection trigger ("Wait, let me re-check that.") is appended after a blank line,
     and the model continues from there (a raw completion of its own chat-rendered text);
  3. `steerserve vectors extract --traces` (difference of means: the blank line just before a trigger against
     blank lines with no reflection word in the next 50 tokens);
  4. `steerserve ab run` over the strengths with a random equal-norm control on the evaluation split.

    python benchmarks/smollm2_reflection.py --base-url http://127.0.0.1:8000 \
        --out benchmarks/results/smollm2_reflection
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

STEERSERVE = str(Path(sys.executable).parent / "steerserve")
INSTRUCTION = "Solve the problem step by step, with a blank line between steps. End with 'Answer: <number>'."
TRIGGERS = (
    "Wait, let me re-check that.",
    "Wait, let me check this step again.",
    "Wait, is that right? Let me re-check.",
    "Let me re-check the calculation.",
)
NAMES = ("Tom", "Mia", "Ravi", "Lena", "Omar", "Sofia", "Ken", "Ada", "Luis", "Nora", "Ivan", "Zoe")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "cards", "shells", "stamps")


@dataclass(frozen=True)
class Problem:
    text: str
    answer: int


def problem(rng: random.Random) -> Problem:
    """A one- or two-step word problem with small numbers (a 135M model gets some of them right)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 20), rng.randint(1, 10)
    kind = rng.randrange(4)
    if kind == 0:
        return Problem(f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b)
    if kind == 1:
        a += b
        return Problem(f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b)
    if kind == 2:
        a, b = rng.randint(2, 6), rng.randint(2, 6)
        return Problem(f"{name} has {a} boxes with {b} {item} in each box. How many {item} are there?", a * b)
    c = rng.randint(1, a + b)
    text = f"{name} has {a} {item}, gets {b} more, then gives away {c}. How many {item} are left?"
    return Problem(text, a + b - c)


def splits(n_extract: int, n_eval: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Disjoint extraction and evaluation problems (no text in both)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < n_extract + n_eval:
        p = problem(rng)
        if p.text not in seen:
            seen.add(p.text)
            out.append(p)
    return out[:n_extract], out[n_extract:]


def prompt_of(p: Problem) -> str:
    return f"{p.text}\n{INSTRUCTION}"


async def rip_traces(
    client: httpx.AsyncClient, tokenizer: Any, model: str, problems: list[Problem], seed: int, concurrency: int
) -> list[dict[str, str]]:
    """One RIP trace per problem: the model's own steps up to a random cut, a trigger, its continuation."""
    rng = random.Random(seed)
    gate = asyncio.Semaphore(concurrency)
    cuts = [rng.random() for _ in problems]
    triggers = [rng.choice(TRIGGERS) for _ in problems]

    async def one(i: int, p: Problem) -> dict[str, str] | None:
        messages = [{"role": "user", "content": prompt_of(p)}]
        async with gate:
            response = await client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": messages, "max_tokens": 160, "temperature": 0.7, "seed": i},
            )
        response.raise_for_status()
        answer = response.json()["choices"][0]["message"]["content"]
        steps = [s for s in answer.replace("\r", "").split("\n\n") if s.strip()]
        if len(steps) < 2:
            steps = [s for s in answer.split("\n") if s.strip()]
        if not steps:
            return None
        keep = max(1, int(cuts[i] * (len(steps) - 1)) + 1) if len(steps) > 1 else 1
        partial = "\n\n".join(steps[:keep]) + "\n\n" + triggers[i]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        async with gate:
            response = await client.post(
                "/v1/completions",
                json={"model": model, "prompt": rendered + partial, "max_tokens": 96, "temperature": 0.7, "seed": i},
            )
        response.raise_for_status()
        continuation = response.json()["choices"][0]["text"]
        return {"prompt": prompt_of(p), "completion": partial + continuation}

    found = await asyncio.gather(*(one(i, p) for i, p in enumerate(problems)))
    return [t for t in found if t is not None]


def cli(*args: str) -> str:
    result = subprocess.run([STEERSERVE, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"steerserve {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


async def main(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.engine_overhead import model_path

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    extract_set, eval_set = splits(args.n_extract, args.n_eval, args.seed)
    with (out / "eval.jsonl").open("w") as handle:
        for i, p in enumerate(eval_set):
            handle.write(json.dumps({"id": f"eval-{i}", "prompt": prompt_of(p), "answer": str(p.answer)}) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path(args.model)[0]))
    async with httpx.AsyncClient(base_url=args.base_url, timeout=600) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        traces = await rip_traces(client, tokenizer, model, extract_set, args.seed, args.concurrency)
    with (out / "traces.jsonl").open("w") as handle:
        for trace in traces:
            handle.write(json.dumps(trace) + "\n")
    print(f"{len(traces)} RIP traces", flush=True)
    extraction = json.loads(
        cli(
            "vectors",
            "extract",
            "--id",
            args.vector,
            "--traces",
            str(out / "traces.jsonl"),
            "--json",
            "--base-url",
            args.base_url,
        )  # fmt: skip
    )
    (out / "extract.json").write_text(json.dumps(extraction, indent=2) + "\n")
    result = extraction["result"]
    print(f"extracted {args.vector}: layers {result['layers']}, counts {result['counts']}", flush=True)
    cli(
        "ab", "run", "--vector", args.vector, f"--strengths={args.strengths}",
        f"--random-strengths={args.random_strengths}", "--dataset", str(out / "eval.jsonl"),
        "--temperature", "0.7", "--max-tokens", str(args.max_tokens), "--concurrency", str(args.concurrency),
        "--base-url", args.base_url, "--out", str(out / "ab"),
    )  # fmt: skip
    print((out / "ab" / "report.md").read_text())


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="for its tokenizer (chat rendering)")
    parser.add_argument("--vector", default="smollm2-reflection")
    parser.add_argument("--n-extract", type=int, default=300)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--strengths", default="-1,-0.5,0,1,2")
    parser.add_argument("--random-strengths", default="-1,2")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/smollm2_reflection"))
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
