"""infosft's chat-template targets are TRL's (issue 14): the same token ids and, token for
token, the same supervised positions as TRL's own SFTTrainer dataset preparation.

The reference is the real TRL: an ``SFTTrainer`` built on a tiny random Llama with the
default model's tokenizer, whose prepared ``train_dataset`` holds TRL's ``input_ids``
and ``labels`` (its ``completion_mask`` / ``assistant_masks`` folded in: a position is
supervised where the label is not -100). The training templates are TRL's own, shipped
with it (``trl/chat_templates/*_training.jinja``). Every test here fails under the old
rule (content + end-of-turn token: no ChatML newline after ``<|im_end|>``, no newline
after ``<|im_start|>assistant`` in qwen2_5_training's generation block).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch

from infosft.data import TARGET_RULE, prepare, tokenize

TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"
IGNORE = -100
END = "<|im_end|>"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

PROMPT_COMPLETIONS = [
    {"prompt": [{"role": "user", "content": "Hi"}],
     "completion": [{"role": "assistant", "content": "Hello there."}]},
    {"prompt": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+2?"}],
     "completion": [{"role": "assistant", "content": "4"}]},
    {"prompt": [{"role": "system", "content": "You answer in lists."},
                {"role": "user", "content": "Name two colors."},
                {"role": "user", "content": "Only primary ones, please."}],
     "completion": [{"role": "assistant", "content": "- red\n- blue\n"}]},
    # leading spaces: BPE merges the header's "\n" with them across the boundary
    {"prompt": [{"role": "user", "content": "Indent it"}],
     "completion": [{"role": "assistant", "content": "  spaced out"}]},
]

CONVERSATION = [
    {"role": "user", "content": "Say yes"},
    {"role": "assistant", "content": "yes"},
    {"role": "user", "content": "Repeat: yes, and add a line"},  # holds turn 1's text
    {"role": "assistant", "content": "Yes, again.\nAnd a line."},
]


# ---------------------------------------------------------------- TRL, the reference


def trl_rows(tokenizer, rows, tmp_path, **config):
    """TRL's prepared ``(input_ids, supervised mask)`` of ``rows``, in order."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True))
    args = SFTConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False,
                     max_length=None, report_to="none", shuffle_dataset=False, **config)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_list(rows))
    prepared = trainer.train_dataset
    assert len(prepared) == len(rows)
    return [(r["input_ids"], [label != IGNORE for label in r["labels"]]) for r in prepared]


def infosft_example(tokenizer, messages):
    """infosft's tokens of a ``{"messages": ...}`` record (through the public prepare)."""
    _, [ex] = prepare([(1, {"messages": messages})], tokenizer, max_length=4096)
    return ex.tokens


def with_template(tokenizer, name, specials=()):
    """A copy of the tokenizer with TRL's ``name`` template (and its special tokens)."""
    tok = copy.deepcopy(tokenizer)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    tok.chat_template = (TRL_TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    return tok


def decoded_targets(tokenizer, tokens) -> str:
    return tokenizer.decode([t for t, m in zip(tokens.input_ids, tokens.target_mask) if m])


# ---------------------------------------------------------------- prompt/completion


def test_default_template_prompt_completion_is_trls(tokenizer, tmp_path):
    """SmolLM2's ChatML template (no generation blocks): the targets of the record as
    ``messages`` are TRL's completion_mask of it as conversational prompt/completion."""
    assert "generation %}" not in tokenizer.chat_template
    reference = trl_rows(tokenizer, PROMPT_COMPLETIONS, tmp_path)
    for row, (ids, supervised) in zip(PROMPT_COMPLETIONS, reference):
        ex = infosft_example(tokenizer, row["prompt"] + row["completion"])
        assert ex.input_ids == ids
        assert ex.target_mask == supervised
        # ChatML's turn after the generation prompt: content, <|im_end|> and its newline
        assert ex.input_ids[-2:] == tokenizer("<|im_end|>\n", add_special_tokens=False)[
            "input_ids"] and ex.target_mask[-2:] == [True, True]


def test_multi_turn_targets_are_trls_prompt_completion_turn_by_turn(tokenizer, tmp_path):
    """Two assistant turns without generation blocks: each turn's targets are TRL's
    completion_mask of (the turns before, that turn) - the rule generalized."""
    turns = [i for i, m in enumerate(CONVERSATION) if m["role"] == "assistant"]
    rows = [{"prompt": CONVERSATION[:i], "completion": [CONVERSATION[i]]} for i in turns]
    reference = trl_rows(tokenizer, rows, tmp_path)
    ex = infosft_example(tokenizer, CONVERSATION)
    expected = [False] * ex.n_tokens
    for ids, supervised in reference:
        assert ex.input_ids[:len(ids)] == ids  # each part is a prefix of the whole
        expected = [e or s for e, s in zip(expected, supervised + [False] * ex.n_tokens)]
    assert ex.input_ids == reference[-1][0]
    assert ex.target_mask == expected
    assert decoded_targets(tokenizer, ex) == "yes<|im_end|>\nYes, again.\nAnd a line.<|im_end|>\n"


def test_gemma_template_prompt_completion_is_trls(tokenizer, tmp_path):
    """A real non-ChatML template without generation blocks (Gemma's, which trims the
    content and writes ``<end_of_turn>\\n``)."""
    tok = with_template(tokenizer, "gemma", ["<start_of_turn>", "<end_of_turn>"])
    rows = [r for r in PROMPT_COMPLETIONS if len(r["prompt"]) == 1]  # no system role
    reference = trl_rows(tok, rows, tmp_path)
    for row, (ids, supervised) in zip(rows, reference):
        ex = infosft_example(tok, row["prompt"] + row["completion"])
        assert ex.input_ids == ids
        assert ex.target_mask == supervised
        assert decoded_targets(tok, ex) == (row["completion"][0]["content"].strip()
                                            + "<end_of_turn>\n")


def test_default_template_hand_built(tokenizer):
    """An independent expectation, written out: ChatML with SmolLM2's default system
    prompt; the targets are the content tokens, ``<|im_end|>`` and ``\\n``."""
    def enc(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    im_start, im_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", END))
    newline = enc("\n")
    head = ([im_start] + enc("system\n" + DEFAULT_SYSTEM) + [im_end] + newline
            + [im_start] + enc("user\nHi") + [im_end] + newline
            + [im_start] + enc("assistant\n"))
    answer = enc("Hello!") + [im_end] + newline
    ex = tokenize([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                  tokenizer, max_length=512)
    assert ex.input_ids == head + answer
    assert ex.target_mask == [False] * len(head) + [True] * len(answer)


# ---------------------------------------------------------------- assistant_only_loss


@pytest.mark.parametrize("name, specials, turn_text", [
    # ChatML with SmolLM2's own <|im_start|>/<|im_end|>: the block starts with the "\n"
    # after "<|im_start|>assistant"
    ("qwen2_5_training", (), "\nyes<|im_end|>\n\nYes, again.\nAnd a line.<|im_end|>\n"),
    ("gemma_training", ("<start_of_turn>", "<end_of_turn>"),
     "yes<end_of_turn>\nYes, again.\nAnd a line.<end_of_turn>\n"),
], ids=["qwen2_5_training", "gemma_training"])
def test_generation_blocks_are_trls_assistant_masks(tokenizer, tmp_path, name, specials,
                                                    turn_text):
    """TRL's training template on ``messages`` with ``assistant_only_loss=True``: the
    targets are its assistant_masks (the characters inside ``{% generation %}``)."""
    tok = with_template(tokenizer, name, specials)
    [(ids, supervised)] = trl_rows(tok, [{"messages": CONVERSATION}], tmp_path,
                                   assistant_only_loss=True)
    ex = infosft_example(tok, CONVERSATION)
    assert ex.input_ids == ids
    assert ex.target_mask == supervised
    assert decoded_targets(tok, ex) == turn_text


# ---------------------------------------------------------------- runs scored before


def _old(run_dir: Path, dest: Path) -> Path:
    """A copy of a scored run with meta.json as the code before the rule wrote it."""
    shutil.copytree(run_dir, dest)
    meta = json.loads((dest / "meta.json").read_text())
    meta.pop("targets")
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


def test_a_scored_run_records_its_target_rule(tiny_run):
    assert tiny_run.meta()["targets"] == TARGET_RULE == "trl"


def test_old_run_is_refused_by_export_and_resume(tiny_run, tmp_path):
    from infosft.analysis.export import export_weighted, read_export_meta
    from infosft.analysis.score import ScoreConfig, score_dataset
    from infosft.errors import InfosftError

    old = _old(tiny_run.path, tmp_path / "old")
    with pytest.raises(InfosftError, match=r"older target rule.*rescore it with --overwrite"):
        export_weighted(old, tmp_path / "w.parquet", "sft")
    assert not (tmp_path / "w.parquet").exists()
    cfg = json.loads((old / "meta.json").read_text())["config"]
    cfg = ScoreConfig(**{**cfg, "out": str(old)})
    with pytest.raises(InfosftError, match=r"older target rule.*use --overwrite"):
        score_dataset(cfg, resume=True, progress=False)
    # the current run exports, and says by which rule
    out = export_weighted(tiny_run.path, tmp_path / "new.parquet", "sft")
    assert read_export_meta(out)["targets"] == TARGET_RULE


def test_old_run_without_template_is_still_current(tiny_run, tmp_path):
    """``--no-template`` and plain text tokenize as they always did: nothing to refuse."""
    from infosft.analysis.export import export_weighted

    old = _old(tiny_run.path, tmp_path / "old")
    meta = json.loads((old / "meta.json").read_text())
    meta["template"] = {"used": False, "chat_template": None}
    (old / "meta.json").write_text(json.dumps(meta))
    assert export_weighted(old, tmp_path / "w.parquet", "sft").exists()


def test_evaluation_does_not_reuse_old_base_scores(tiny_run, tmp_path):
    """An old sibling's base scores are not reused (they are scored afresh)."""
    from infosft.analysis.evaluate import reusable_scores
    from infosft.analysis.score import ScoreConfig

    meta = tiny_run.meta()
    cfg = ScoreConfig(**{**meta["config"], "out": str(tmp_path / "x")})
    content_hash = meta["dataset"]["content_hash"]
    assert reusable_scores(cfg, content_hash, [tiny_run.path]) == tiny_run.path
    old = _old(tiny_run.path, tmp_path / "old")
    assert reusable_scores(cfg, content_hash, [old]) is None


def test_answers_stop_at_the_end_of_turn_token_inside_the_targets(tokenizer):
    """The last target is now the template's newline; greedy answers still stop at the
    end-of-turn token before it (Gemma's <end_of_turn> is no eos)."""
    from infosft.analysis.accuracy import prompt_ids, stop_ids

    tok = with_template(tokenizer, "gemma", ["<start_of_turn>", "<end_of_turn>"])
    _, examples = prepare([(1, {"messages": CONVERSATION})], tok, max_length=512)
    ex = examples[0].tokens
    last = max(i for i, m in enumerate(ex.target_mask) if m)
    assert tok.decode(ex.input_ids[last - 1:last + 1]) == "<end_of_turn>\n"
    assert tok.convert_tokens_to_ids("<end_of_turn>") in stop_ids(examples, tok)
    assert tok.decode(prompt_ids(examples[0])).endswith("<start_of_turn>model\n")
