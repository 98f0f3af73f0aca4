"""Train the toy demo reasoning model (seeded, CPU): ``python -m research.toy.train --out DIR``.

The defaults are the bundled toy's recipe: 3,600 steps of 32 traces, eager attention, bf16 autocast where the CPU
has native bf16 (fp32 elsewhere). It took 40.0 min on 2 cores of an AMD EPYC with AVX-512 BF16 (~0.65 s/step);
the same command took 46.3 min there on a slower day, and an AVX2-only CPU (fp32) needs ~1.2-1.4 s/step, about
twice as long. ``--attention sdpa --batch-size 64 --steps 2800`` is the previous toy's recipe (73.5 min; it noticed
its slips better). ``--device cuda`` trains it in minutes on a GPU, for trying data designs
(`research/demo_design_screen.py`); the bundled weights come from the CPU run. Each held-out evaluation also logs
`p_wait`, whether the model notices its slips (`research.toy.probe`); ``--decision-weight`` weights the
reflect-or-go-on token in the loss (tried for a cheaper recipe; not the bundled one).

A 4-layer Llama (hidden 256, ~3.2 M parameters, tied embeddings, ~13 MB fp32) learns the synthetic traces of
`research.toy.arith`: step-by-step chain arithmetic inside ``<think>`` with occasional errors and
reflection. It is a toy: it exists so that the steering workflow (extraction, presets, A/B reports) can be
shown end to end on a laptop, not to reason. The tokenizer is a byte-level BPE trained here with single-digit
pre-tokenisation; ``\\n\\n`` is kept as one token, so step delimiters are single tokens like in R1-style models.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from research.toy.arith import CHAT_TEMPLATE, THINK_CLOSE, THINK_OPEN, Trace, TraceStyle, problems, trace
from research.toy.probe import reflection_propensity

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# The toy's sampling temperature, saved as its generation-config default (which the server applies to requests
# that send none): at 0.7 its digit noise is gone but its slips (one wrong value with p = 0.25) and its re-check
# decisions are still sampled; at 1.0 it makes many more mistakes of its own.
DEMO_TEMPERATURE = 0.7


def user_prompt(problem_text: str) -> str:
    """The rendered chat prompt of one problem (the chat template, written out for fast batch encoding)."""
    return f"<|user|>\n{problem_text}</s>\n<|assistant|>\n"


def build_tokenizer(corpus: list[str], vocab_size: int) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n\n"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    # The thinking markers are ordinary added tokens (kept in decoded text, as in R1-style tokenizers).
    tokenizer.add_tokens([AddedToken(THINK_OPEN, normalized=False), AddedToken(THINK_CLOSE, normalized=False)])
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16). Elsewhere (e.g. AVX2-only CPUs) bf16
    autocast is emulated and ~25x slower than fp32, so training stays in fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def device_kind(device: str) -> str:
    """ "cuda" for any CUDA device ("cuda", "cuda:1"), else "cpu"."""
    return "cuda" if device.startswith("cuda") else "cpu"


def autocast(bf16: bool, device: str = "cpu") -> Any:
    """bf16 autocast on `device` (any CPU or CUDA device), or no autocast (fp32)."""
    import contextlib

    import torch

    return torch.autocast(device_kind(device), dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


Example = tuple[list[int], list[bool]]  # token ids, and whether each token is a training target


def encode(tokenizer: Any, pairs: list[tuple[str, Trace]], chunk: int = 8192) -> list[Example]:
    """Token ids and loss mask per (problem text, trace) pair: the completion (ending with end-of-sequence) is
    trained, except tokens that overlap the trace's untrained spans; the prompt is not."""
    out: list[Example] = []
    for start in range(0, len(pairs), chunk):  # in chunks: offset mappings of 250k texts at once take GBs
        part = pairs[start : start + chunk]
        prompts = tokenizer([user_prompt(p) for p, _ in part], add_special_tokens=False)["input_ids"]
        completions = tokenizer(
            [t.text + "</s>" for _, t in part], add_special_tokens=False, return_offsets_mapping=True
        )
        for prompt, ids, offsets, (_, t) in zip(
            prompts, completions["input_ids"], completions["offset_mapping"], part, strict=True
        ):
            out.append((list(prompt) + list(ids), [False] * len(prompt) + trained_mask(offsets, t.untrained)))
    return out


def trained_mask(offsets: list[tuple[int, int]], untrained: tuple[tuple[int, int], ...]) -> list[bool]:
    """Per completion token (by its character offsets): trained unless it overlaps one of the untrained spans."""
    if not untrained:
        return [True] * len(offsets)
    return [not any(s < end and a < e for a, end in untrained) for s, e in offsets]


def length_batches(data: list[Example], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar length (little padding: ~3x faster on CPU), in random order."""
    order = sorted(range(len(data)), key=lambda i: (len(data[i][0]), rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


def pad_ids(rows: list[list[int]], pad_id: int) -> Any:
    """Token id rows as one right-padded tensor."""
    import torch

    inputs = torch.full((len(rows), max(len(ids) for ids in rows)), pad_id, dtype=torch.long)
    for row, ids in enumerate(rows):
        inputs[row, : len(ids)] = torch.tensor(ids)
    return inputs


def batch_tensors(examples: list[Example], pad_id: int) -> tuple[Any, Any]:
    import torch

    inputs = pad_ids([ids for ids, _ in examples], pad_id)
    labels = torch.full(inputs.shape, -100, dtype=torch.long)
    for row, (ids, trained) in enumerate(examples):
        labels[row, : len(ids)] = torch.where(torch.tensor(trained), inputs[row, : len(ids)], -100)
    return inputs, labels


def train(
    out: Path,
    steps: int = 3600,
    batch_size: int = 32,
    train_traces: int = 250_000,
    lr: float = 2e-3,
    warmup: int = 150,
    vocab_size: int = 320,
    seed: int = 0,
    threads: int = 2,
    log_every: int = 50,
    precision: str = "auto",
    style: TraceStyle | None = None,
    device: str = "cpu",
    layers: int = 4,
    attention: str = "eager",
    decision_weight: float = 1.0,
) -> dict[str, Any]:
    """Train and save the model, tokenizer and training log to `out`; returns the final summary.
    `precision`: "bf16" (autocast), "fp32", or "auto" (bf16 on CUDA, and where the CPU has it natively).
    `device`: "cpu" (the shipped model's) or "cuda" (for trying data designs quickly; not bit-identical).
    `attention`: "eager" (the shipped model's; ~1.3x faster on CPU) or "sdpa" (the previous toy's; other rounding).
    `decision_weight`: loss weight of the token after each ``\\n\\n`` (reflect or go on; see `decision_loss`)."""
    import torch
    import transformers

    if attention not in ("sdpa", "eager"):
        raise ValueError(f"attention must be 'sdpa' or 'eager', not {attention!r}")
    if decision_weight <= 0:
        raise ValueError(f"decision_weight must be positive, not {decision_weight}")
    kind = device_kind(device)
    bf16 = precision == "bf16" or (precision == "auto" and (kind == "cuda" or native_bf16()))
    style = style or TraceStyle()

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    started = time.monotonic()
    rng = random.Random(seed)
    train_problems = problems(seed, train_traces, "train", style)
    pairs = [(p.text, trace(p, rng, style)) for p in train_problems]
    held_out = [(p.text, trace(p, rng, style)) for p in problems(seed + 1, 512, "eval", style)]
    tokenizer = build_tokenizer([user_prompt(p) + t.text for p, t in pairs[:20_000]], vocab_size)
    data = encode(tokenizer, pairs)
    held = encode(tokenizer, held_out)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    # "eager" (two matmuls and a softmax) trains ~1.3x faster on CPU than "sdpa", whose CPU flash-attention
    # backward takes a third of each step at these sizes. The architecture is the same, but the rounding is not, and
    # this toy's training is sensitive to it: the same recipe with the other attention is a different model.
    config._attn_implementation = attention
    model: Any = transformers.LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "training_log.jsonl"
    order = random.Random(seed + 2)
    log = log_path.open("w")
    header = {
        "event": "start",
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "train_traces": len(data),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "style": style.__dict__,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "attention": config._attn_implementation,
        "decision_weight": decision_weight,
        "device": kind,
        "data_seconds": round(time.monotonic() - started, 1),
    }
    log.write(json.dumps(header) + "\n")
    running = 0.0
    delimiter = tokenizer("\n\n", add_special_tokens=False)["input_ids"][0]
    model.train()
    batches: list[list[int]] = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        if not batches:
            batches = length_batches(data, batch_size, order)
        inputs, labels = batch_tensors([data[i] for i in batches.pop()], tokenizer.pad_token_id)
        inputs, labels = inputs.to(device), labels.to(device)
        with autocast(bf16, kind):
            if decision_weight == 1.0:  # the bundled recipe's exact loss
                loss = logged = model(input_ids=inputs, labels=labels).loss
            else:
                loss, logged = decision_loss(model(input_ids=inputs).logits, inputs, labels, delimiter, decision_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += logged.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            count = (step % log_every) + 1
            record = {
                "step": step + 1,
                "loss": round(running / count, 4),
                "lr": round(optimizer.param_groups[0]["lr"], 6),
                "elapsed_s": round(time.monotonic() - started, 1),
            }
            if (step + 1) % (log_every * 10) == 0 or step + 1 == steps:
                record["held_out_loss"] = round(held_out_loss(model, held, tokenizer.pad_token_id, bf16, device), 4)
                # Does it notice its slips yet? (teacher-forced; reads the model only, so training is unchanged)
                record["p_wait"] = reflection_propensity(model, tokenizer, held_out[:256], bf16, device)["p_wait"]
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)
            running = 0.0
    model.eval()
    summary = {
        "event": "done",
        "held_out_loss": round(held_out_loss(model, held, tokenizer.pad_token_id, bf16, device), 4),
        "seconds": round(time.monotonic() - started, 1),
    }
    log.write(json.dumps(summary) + "\n")
    log.close()
    model.generation_config.do_sample = True
    model.generation_config.temperature = DEMO_TEMPERATURE
    model.to("cpu").save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return summary


def next_token_losses(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Per-position next-token cross-entropy (float32; 0 where the target is untrained) and the trained mask."""
    import torch

    targets = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )
    return per_token, (targets != -100).float()


def decision_loss(logits: Any, inputs: Any, labels: Any, delimiter: int, weight: float) -> tuple[Any, Any]:
    """(Loss to train on, plain mean loss to log): next-token cross-entropy in which each target right after a
    ``\\n\\n`` token (the decision to reflect, take the next step or close the thinking) weighs `weight` times
    the others. Each context's optimum is still the data's own conditional distribution, so the trained rates of
    reflection stay calibrated; the weight only makes the model learn the decision earlier in training (e.g.
    whether the step it just wrote is wrong) instead of spending those steps on digits it already gets right."""
    import torch

    per_token, trained = next_token_losses(logits, labels)
    weights = torch.where(inputs[:, :-1] == delimiter, weight, 1.0) * trained
    return (per_token * weights).sum() / weights.sum(), (per_token * trained).sum() / trained.sum()


def held_out_loss(model: Any, examples: list[Example], pad_id: int, bf16: bool, device: str = "cpu") -> float:
    """Mean over groups of 128 examples (in order) of each group's mean next-token loss, as the Hugging Face loss
    of one padded batch of 128 gives it. Each group runs as length-sorted sub-batches of 32, so little of the
    compute goes to padding (~3x less time on CPU); causal attention and right padding leave the loss unchanged."""
    import torch

    was_training = model.training
    model.eval()
    means = []
    with torch.no_grad(), autocast(bf16, device):
        for start in range(0, len(examples), 128):
            group = sorted(examples[start : start + 128], key=lambda example: len(example[0]))
            total, tokens = 0.0, 0
            for sub in range(0, len(group), 32):
                inputs, labels = batch_tensors(group[sub : sub + 32], pad_id)
                per_token, trained = next_token_losses(model(input_ids=inputs.to(device)).logits, labels.to(device))
                total += float(per_token.sum())
                tokens += int(trained.sum())
            means.append(total / max(1, tokens))
    model.train(was_training)
    return sum(means) / max(1, len(means))


def main(
    out: Annotated[Path, typer.Option(help="Output directory (weights, tokenizer, training_log.jsonl).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 3600,
    batch_size: Annotated[int, typer.Option(help="Traces per step.")] = 32,
    train_traces: Annotated[int, typer.Option(help="Distinct training traces generated.")] = 250_000,
    seed: Annotated[int, typer.Option(help="Seed of data, initialisation and batch order.")] = 0,
    threads: Annotated[int, typer.Option(help="Torch CPU threads.")] = 2,
    precision: Annotated[str, typer.Option(help="bf16 | fp32 | auto (bf16 where the CPU has it natively).")] = "auto",
    style: Annotated[
        str, typer.Option(help="JSON overrides of the data's TraceStyle, e.g. '{\"p_drill\": 0.06}'.")
    ] = "{}",
    device: Annotated[str, typer.Option(help="cpu (the shipped model's) or cuda (to try data designs fast).")] = "cpu",
    attention: Annotated[
        str, typer.Option(help="eager (the shipped model's; ~1.3x faster on CPU) or sdpa (rounds differently).")
    ] = "eager",
    decision_weight: Annotated[
        float, typer.Option(help="Loss weight of the token after each \\n\\n (reflect or go on); 1 = plain loss.")
    ] = 1.0,
) -> None:
    """Train the toy demo reasoning model."""
    summary = train(
        out,
        steps=steps,
        batch_size=batch_size,
        train_traces=train_traces,
        seed=seed,
        threads=threads,
        precision=precision,
        style=TraceStyle(**json.loads(style)),
        device=device,
        attention=attention,
        decision_weight=decision_weight,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    typer.run(main)
