"""Tiny random-weight models with a locally trained tokenizer, built offline (tests, benchmarks, first start).

Nothing is downloaded: the tokenizer is a byte-level BPE trained with `tokenizers` on a generated corpus, and
the weights are drawn from a seeded generator. A built model is cached by its spec hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
THINK_TOKENS = ["<think>", "</think>"]  # ordinary added tokens: kept in decoded text, as in R1-style tokenizers
_WORDS = (
    "the a of to and in is it that for on with as was at by be this are from or have an they which one you "
    "wait let me re-check recheck think again answer step first then so therefore check result value sum "
    "model steer vector layer token prompt reflect question because number plus minus equals total right "
    "wrong hmm okay good next compute add subtract multiply divide carry digit final Q: A:"
).split()


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture and size of a tiny model; the defaults give a ~1 MB Llama."""

    architecture: str = "llama"  # llama | qwen2 | qwen3 | mistral | phi3 | gemma3 | granite | mixtral | qwen3_moe
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 512
    max_position_embeddings: int = 1024
    initializer_range: float = 0.1
    tie_word_embeddings: bool = False
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True) + "|v3"
        return f"{self.architecture}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    root = os.environ.get("STEERSERVE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "steerserve")
    return Path(root) / "tiny-models"


def build_tiny_model(spec: TinyModelSpec = TinyModelSpec(), cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the model for `spec`; returns a directory vLLM and transformers can load."""
    target = (cache_dir or default_cache_dir()) / spec.key()
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(tmp, spec)
    _write_model(tmp, spec)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is equivalent
        pass
    return target


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(lines):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        out.append(
            f"Q: {a}+{b}\n<think>\n{a}+{b}={a + b}\n\nWait, let me re-check.\n\n</think>\nA: {a + b}\n{words}\n\n"
        )
    return out


def _write_tokenizer(path: Path, spec: TinyModelSpec) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(spec.seed), trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))


def _hf_config(spec: TinyModelSpec, vocab_size: int) -> object:
    import transformers

    common = dict(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )
    head_dim = spec.hidden_size // spec.num_heads
    classes: dict[str, tuple[type, dict[str, object]]] = {
        "llama": (transformers.LlamaConfig, {}),
        "qwen2": (transformers.Qwen2Config, {}),
        "qwen3": (transformers.Qwen3Config, {"head_dim": head_dim}),
        "mistral": (transformers.MistralConfig, {}),
        "phi3": (transformers.Phi3Config, {"pad_token_id": 2}),
        # post-norms around attention and MLP, (1 + w) RMSNorm, scaled embeddings, local/global attention
        "gemma3": (transformers.Gemma3TextConfig, {"head_dim": head_dim, "query_pre_attn_scalar": head_dim}),
        # MoE: the block's MLP is a sparse mixture of experts
        "mixtral": (transformers.MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
        # single-hidden-state layers with residual, embedding, attention and logit multipliers
        "granite": (
            transformers.GraniteConfig,
            {
                "embedding_multiplier": 2.0,
                "residual_multiplier": 0.5,
                "attention_multiplier": 1.5 / head_dim**0.5,
                "logits_scaling": 2.0,
            },
        ),
        "qwen3_moe": (
            transformers.Qwen3MoeConfig,
            {
                "head_dim": head_dim,
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": spec.intermediate_size // 2,
                "decoder_sparse_step": 1,
            },
        ),
    }
    if spec.architecture not in classes:
        raise ValueError(f"unknown tiny architecture {spec.architecture!r}; use one of {sorted(classes)}")
    config_class, extra = classes[spec.architecture]
    return config_class(**common, **extra)


def _write_model(path: Path, spec: TinyModelSpec) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(str(path)))
    config = _hf_config(spec, vocab_size)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    with torch.no_grad():  # RMSNorm weights start at 1; give them spread so layers differ
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    model.save_pretrained(str(path), safe_serialization=True)
