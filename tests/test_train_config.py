"""TrainConfig: defaults, file + flag precedence, and one-line errors naming the field,
all before any model or data is loaded."""

from __future__ import annotations

import json

import pytest
import yaml

from infosft.errors import InfosftError
from infosft.train_config import (FIELD_NAMES, FULL_LR, LORA_LR, TrainConfig, dump,
                                  load_config, resolve, resume_config)

from tests.helpers import SAMPLE


def base(**kw):
    return {"data": str(SAMPLE), "out": "runs/x", **kw}


def test_defaults_and_lr_follows_lora():
    cfg = resolve(base())
    assert (cfg.scheme, cfg.mode, cfg.lora, cfg.seed, cfg.report_to) == (
        "infosft", "online", True, 0, ["none"])
    assert cfg.lr == LORA_LR
    assert resolve(base(lora=False)).lr == FULL_LR
    assert resolve(base(lora=False, lr=1e-3)).lr == 1e-3
    assert cfg.resolved_knobs() == pytest.approx({"C": 2.5866893, "P": 0.93})


def test_every_field_has_a_default_and_help():
    from dataclasses import fields

    for f in fields(TrainConfig):
        assert f.metadata["help"], f.name
    TrainConfig()  # all defaults exist


@pytest.mark.parametrize("field, value, words", [
    ("scheme", "foo", ["scheme", "sft, dft, infosft, profit"]),
    ("mode", "offline", ["mode", "online, static"]),
    ("C", -1.0, ["C", "> 0"]),
    ("P", 1.5, ["P", "(0.5, 1)"]),
    ("lr", 0, ["lr", "> 0"]),
    ("lr", "fast", ["lr", "a number"]),
    ("batch_size", 0, ["batch_size", ">= 1"]),
    ("grad_accum", 1.5, ["grad_accum", "integer"]),
    ("max_steps", -3, ["max_steps", ">= 1"]),
    ("max_length", 1, ["max_length", ">= 2"]),
    ("epochs", 0, ["epochs", "(0, inf]"]),
    ("lora", "yes", ["lora", "true or false"]),
    ("lora_r", 0, ["lora_r", ">= 1"]),
    ("lora_dropout", 1.0, ["lora_dropout", "[0, 1)"]),
    ("eval_split", 1.0, ["eval_split", "[0, 1)"]),
    ("warmup_ratio", -0.1, ["warmup_ratio", "[0, 1)"]),
    ("weight_decay", -1, ["weight_decay", "[0, inf]"]),
    ("dtype", "float8", ["dtype", "float32, bfloat16"]),
    ("seed", "zero", ["seed", "integer"]),
    ("fields", ["prompt"], ["fields", "mapping"]),
    ("report_to", [1], ["report_to", "list"]),
    ("eval_data", "missing.jsonl", ["eval_data", "no such file"]),
])
def test_bad_field_is_named(field, value, words):
    with pytest.raises(InfosftError) as e:
        resolve(base(**{field: value}))
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_profit_knobs_and_required_fields():
    cfg = resolve(base(scheme="profit", threshold=[0.2, 0.8], direction="middle"))
    assert cfg.resolved_knobs() == {"threshold": [0.2, 0.8], "direction": "middle", "seed": 0}
    with pytest.raises(InfosftError, match="threshold"):
        resolve(base(scheme="profit", threshold=2.0))
    with pytest.raises(InfosftError, match="direction"):
        resolve(base(scheme="profit", direction="sideways"))
    with pytest.raises(InfosftError, match="'data' is required"):
        resolve({"out": "x"})
    with pytest.raises(InfosftError, match="'out' is required"):
        resolve({"data": str(SAMPLE)})
    with pytest.raises(InfosftError, match="'data': no such file"):
        resolve(base(data="nope.jsonl"))


def test_file_then_flags_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base(scheme="dft", batch_size=8, lr=3e-4, seed=5)))
    values = load_config(path)
    cfg = resolve(values, {"batch_size": 2, "scheme": None, "lr": None, "threshold": [0.3]})
    assert (cfg.scheme, cfg.batch_size, cfg.lr, cfg.seed) == ("dft", 2, 3e-4, 5)
    assert cfg.threshold == 0.3  # a one-value flag list is a number
    jpath = tmp_path / "run.json"
    jpath.write_text(json.dumps(base(epochs=2)))
    assert resolve(load_config(jpath)).epochs == 2


def test_unknown_key_and_bad_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: x.jsonl\nlearning_rate: 0.1\n")
    with pytest.raises(InfosftError, match="run.yaml: unknown config key 'learning_rate'"):
        load_config(path)
    with pytest.raises(InfosftError, match="unknown config key 'bogus'"):
        resolve(base(bogus=1))
    path.write_text("- a\n- b\n")
    with pytest.raises(InfosftError, match="expected a mapping"):
        load_config(path)
    path.write_text("data: [unclosed\n")
    with pytest.raises(InfosftError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(InfosftError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_dump_round_trips(tmp_path):
    cfg = resolve(base(scheme="profit", threshold=[0.1, 0.9], direction="middle",
                       fields={"prompt": "q", "response": "a"}))
    path = dump(cfg, tmp_path / "config.yaml")
    assert resolve(load_config(path)) == cfg
    assert set(yaml.safe_load(path.read_text())) == set(FIELD_NAMES)


def test_resume_refuses_result_changes():
    stored = vars(resolve(base(max_steps=10)))
    cfg = resume_config(stored, {}, {"logging_steps": 1, "out": "runs/x", "lr": None})
    assert cfg.logging_steps == 1 and cfg.max_steps == 10
    with pytest.raises(InfosftError, match="--resume: 'lr'"):
        resume_config(stored, {}, {"lr": 1.0})
    with pytest.raises(InfosftError, match="--resume: 'scheme'"):
        resume_config(stored, {"scheme": "sft"}, {})
    # Repeating the stored value is fine.
    assert resume_config(stored, {}, {"max_steps": 10}).max_steps == 10


def test_cli_config_error_exits_2_before_loading(tmp_path, capsys):
    from infosft.app.cli import main

    rc = main(["train", "--data", str(SAMPLE), "--out", str(tmp_path / "r"), "--P", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("infosft: error: ") and err.count("\n") == 1
    assert "P must be in (0.5, 1)" in err
    assert not (tmp_path / "r").exists()  # nothing created, nothing loaded
