"""Hugging Face conventions: the chat template, the ModelOutput, the attention implementation, GSM8K sources."""

from __future__ import annotations

import json
import logging
import sys
import types
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer
from transformers.utils import ModelOutput

from medlm.checkpoint import new_model
from medlm.modeling import MedlmForEditing, MedlmOutput
from medlm.tasks import load_gsm8k
from medlm.tokenizer import CHAT_TEMPLATE, chat_prompt_ids, special_ids, stdlib_corpus, train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(stdlib_corpus(max_files=20), vocab_size=512)


def legacy_chat_prompt_ids(tokenizer, messages) -> list[int]:
    """The prompt format as it was built before the chat template: piece by piece."""
    sp = special_ids(tokenizer)
    ids: list[int] = []
    for m in messages:
        ids.append(sp.im_start)
        ids.extend(tokenizer.encode(f"{m['role']}\n{m['content']}", add_special_tokens=False))
        ids.append(sp.im_end)
        ids.extend(tokenizer.encode("\n", add_special_tokens=False))
    ids.append(sp.im_start)
    ids.extend(tokenizer.encode("assistant\n", add_special_tokens=False))
    return ids


CONVERSATIONS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": "Be brief.\n"}, {"role": "user", "content": "  two  spaces\tand tab"},
     {"role": "assistant", "content": "ok"}, {"role": "user", "content": "ünïcode ✓ and <b>markup</b>\n\n"}],
    [{"role": "user", "content": "def f(x):\n    return x + 1  # code"}],
    [{"role": "user", "content": "ends with a newline\n"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
def test_chat_template_gives_the_same_ids_as_before(tok, messages):
    assert chat_prompt_ids(tok, messages=messages) == legacy_chat_prompt_ids(tok, messages)


def test_chat_template_is_saved_with_the_tokenizer(tok, tmp_path):
    assert tok.chat_template == CHAT_TEMPLATE
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again.chat_template == CHAT_TEMPLATE
    msgs = [{"role": "user", "content": "hi"}]
    assert again.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert chat_prompt_ids(again, prompt="hi") == legacy_chat_prompt_ids(again, msgs)


def test_a_tokenizer_keeps_its_own_chat_template(tok, tmp_path):
    tok.save_pretrained(str(tmp_path))
    own = AutoTokenizer.from_pretrained(str(tmp_path))
    own.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}<|im_end|>"
    ids = chat_prompt_ids(own, prompt="hi")
    sp = special_ids(own)
    assert ids == [sp.im_start, *own.encode("hi", add_special_tokens=False), sp.im_end]
    no_template = AutoTokenizer.from_pretrained(str(tmp_path))
    no_template.chat_template = None  # a tokenizer saved before the template existed
    assert chat_prompt_ids(no_template, prompt="hi") == chat_prompt_ids(tok, prompt="hi")


def test_bad_messages_are_refused(tok):
    with pytest.raises(ValueError, match="role 'tool'"):
        chat_prompt_ids(tok, messages=[{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="content must be a string"):
        chat_prompt_ids(tok, messages=[{"role": "user", "content": 3}])


def test_model_output_is_a_model_output(tok):
    model = new_model("tiny", tok).eval()
    out = model(torch.arange(6, 20))
    assert isinstance(out, ModelOutput) and isinstance(out, MedlmOutput)
    assert out.token_logits is out["token_logits"] is out[0]
    assert out.insert_logits is out["insert_logits"]
    no_insert = model(torch.arange(6, 20), return_insert=False)
    assert no_insert.insert_logits is None and list(no_insert.keys()) == ["token_logits"]


def test_attention_is_the_configs_implementation(tok, tmp_path, monkeypatch):
    model = new_model("tiny", tok).eval()
    assert model.config._attn_implementation == "sdpa"  # no flash_attn on this machine
    model.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert not any("attn_implementation" in k for k in config)  # chosen at load time, not stored
    ids, cu = torch.arange(6, 40), torch.tensor([0, 9, 34], dtype=torch.int32)
    ref = model(ids, cu_seqlens=cu)
    calls = []
    import medlm.modeling as modeling

    for impl, kernel in (("sdpa", "_sdpa"), ("eager", "_eager")):
        real = getattr(modeling, kernel)
        monkeypatch.setattr(modeling, kernel, lambda q, k, v, f=real, n=impl: calls.append(n) or f(q, k, v))
        loaded = MedlmForEditing.from_pretrained(str(tmp_path), attn_implementation=impl).eval()
        assert loaded.config._attn_implementation == impl
        out = loaded(ids, cu_seqlens=cu)
        torch.testing.assert_close(out.token_logits, ref.token_logits, atol=1e-5, rtol=1e-4)
        assert calls and set(calls) == {impl}
        calls.clear()
    # configs saved before the attention implementation existed carried an unused hint: ignored
    config["attn_implementation_hint"] = "auto"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert not hasattr(MedlmForEditing.from_pretrained(str(tmp_path)).config, "attn_implementation_hint")


def test_a_saved_checkpoint_loads_with_the_auto_classes_without_a_warning(tok, tmp_path):
    """Importing medlm.modeling registers ``medlm`` with AutoConfig and AutoModel, so a checkpoint loads with
    the three Auto classes like any Hugging Face model: no "unknown model type" warning (AutoTokenizer reads
    config.json too), the same classes and the same logits as load_checkpoint."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    from medlm.checkpoint import UNTRAINED_HEADS, load_checkpoint, save_checkpoint
    from medlm.modeling import MedlmConfig

    save_checkpoint(new_model("tiny", tok), tok, tmp_path, extra=UNTRAINED_HEADS)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # collect instead of printing
    hf_root = logging.getLogger("transformers")
    hf_root.addHandler(handler)
    try:
        hf_logging.get_logger("transformers.medlm_probe").warning("probe")  # the capture sees library warnings
        assert [r.getMessage() for r in records] == ["probe"]
        records.clear()
        logging.Logger.warning_once.cache_clear()  # transformers warns some things once per process: reset that
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = AutoConfig.from_pretrained(str(tmp_path))
            tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
            model = AutoModel.from_pretrained(str(tmp_path)).eval()
    finally:
        hf_root.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert type(config) is MedlmConfig and type(model) is MedlmForEditing

    ref, ref_tok = load_checkpoint(tmp_path)
    text = "def add(a, b):\n    return a + b"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == ref_tok.encode(text, add_special_tokens=False)
    assert special_ids(tokenizer) == special_ids(ref_tok)
    with torch.no_grad():
        out, want = model(torch.tensor(ids)), ref(torch.tensor(ids))
    torch.testing.assert_close(out.token_logits, want.token_logits, rtol=0, atol=0)
    torch.testing.assert_close(out.insert_logits, want.insert_logits, rtol=0, atol=0)


def test_flash_attention_is_the_default_where_it_can_run(monkeypatch):
    import medlm.modeling as modeling

    assert modeling.default_attn_implementation() == ("flash_attention_2" if modeling.flash_attn_varlen_func is not None
                                                      and torch.cuda.is_available() else "sdpa")
    monkeypatch.setattr(modeling, "flash_attn_varlen_func", object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert modeling.default_attn_implementation() == "flash_attention_2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modeling.default_attn_implementation() == "sdpa"


# ---------------------------------------------------------------------------------------------- GSM8K

ROWS = [{"question": f"q{i}", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(4)]


def test_gsm8k_from_a_jsonl_file_a_parquet_file_and_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDLM_GSM8K", raising=False)
    monkeypatch.delenv("MEDLM_GSM8K_DIR", raising=False)
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    parquet = tmp_path / "snapshot" / "main" / "test-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    want = [{"id": f"gsm8k-test-{i:06d}", **r} for i, r in enumerate(ROWS)]
    assert load_gsm8k("test", source=jsonl) == want
    assert load_gsm8k("test", source=parquet) == want
    assert load_gsm8k("test", source=tmp_path / "snapshot", limit=2) == want[:2]  # a hub snapshot folder
    monkeypatch.setenv("MEDLM_GSM8K", str(jsonl))
    assert load_gsm8k("test") == want
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match="row 0 lacks the string fields question and answer"):
        load_gsm8k("test", source=bad)


def test_gsm8k_from_the_hub_goes_through_datasets(monkeypatch):
    calls = []
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda *a, **k: calls.append((a, k)) or ROWS
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setenv("MEDLM_GSM8K", "hub")
    rows = load_gsm8k("train", limit=3)
    assert calls == [(("openai/gsm8k", "main"), {"split": "train"})]
    assert [r["id"] for r in rows] == ["gsm8k-train-000000", "gsm8k-train-000001", "gsm8k-train-000002"]


def test_gsm8k_from_the_hub_without_datasets_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(ImportError, match=r"needs the `datasets` package.*pip install 'medlm\[hub\]'"):
        load_gsm8k("test", source="hub")
