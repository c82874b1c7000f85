"""LLaDA's decoding options reach the sampler from every entry point, and bad values are refused
before any work naming the field: ``medlm eval`` (config, flags, actors), the Serve request models
(native and OpenAI extra fields) and the reply (stop ids end a response with finish_reason "stop").
The HTTP round trip is in tests/test_serve.py; the sampler itself in tests/test_llada_parity.py."""

import numpy as np
import pytest
from pydantic import ValidationError

from jobs import init_model
from jobs.evaluate import cli as eval_cli
from jobs.evaluate import decode_options_of, parse_args
from medlm.evaluation import Budget, evaluate_samples, load_eval_model, load_samples
from medlm.sampling import DecodeConfig, DecodeResult
from medlm.tokenizer import chat_prompt_ids, special_ids
from pipeline.eval.run import EvalActor
from pipeline.serve.api import (
    ApiError,
    ChatCompletionRequest,
    Limits,
    RefineRequest,
    ServeArgs,
    decode_config,
    describe_validation_errors,
)
from pipeline.serve.replies import Outcome

OPTIONS = {"temperature": 0.7, "remasking": "random", "cfg_scale": 1.0, "logits_eos_inf": False,
           "confidence_eos_eot_inf": True, "stop_ids": [9]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("opts") / "ckpt"
    assert init_model.cli(["--preset", "tiny", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def model_and_tokenizer(checkpoint):
    return load_eval_model(checkpoint, device="cpu")


# ---------------------------------------------------------------- medlm eval


def test_eval_config_flags_and_overrides_carry_the_options():
    cfg = parse_args(["--checkpoint", "c", "--temperature", "0.7", "--remasking", "random", "--cfg-scale", "1",
                      "--confidence-eos-eot-inf", "stop_ids=[9]"])
    assert decode_options_of(cfg) == OPTIONS
    assert decode_options_of(parse_args(["--checkpoint", "c"])) == {
        "temperature": 0.0, "remasking": "low_confidence", "cfg_scale": 0.0, "logits_eos_inf": False,
        "confidence_eos_eot_inf": False, "stop_ids": []}


@pytest.mark.parametrize("args, message", [
    (["--remasking", "top_k"], "remasking: expected 'low_confidence' or 'random', got 'top_k'"),
    (["--cfg-scale", "-1"], "cfg_scale: expected a value >= 0"),
    (["stop_ids=[100000]"], "stop_ids: token id 100000 is outside the vocabulary"),
])
def test_medlm_eval_refuses_bad_options_before_ray_naming_the_field(checkpoint, tmp_path, capsys, args, message):
    import ray

    assert eval_cli(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--n", "2", *args]) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "o").exists()


def test_evaluation_decodes_with_the_options_and_grades_only_up_to_a_stop_id(model_and_tokenizer):
    model, tok = model_and_tokenizer
    samples = load_samples("toy", 3)
    budget = Budget.of(4, 0)
    plain = evaluate_samples(model, tok, samples, budget, "toy", gen_len=12, seed=1)
    # a stop id that the plain run's drafts contain: every text is cut at its first occurrence
    first = tok.encode(plain[0]["draft"], add_special_tokens=False)[1]
    cut = evaluate_samples(model, tok, samples, budget, "toy", gen_len=12, seed=1,
                           decode_options={"stop_ids": [first]})
    assert plain[0]["draft"].startswith(cut[0]["draft"]) and len(cut[0]["draft"]) < len(plain[0]["draft"])
    opts = {**OPTIONS, "stop_ids": []}
    together = evaluate_samples(model, tok, samples, budget, "toy", gen_len=12, seed=1, decode_options=opts)
    alone = evaluate_samples(model, tok, samples[1:2], budget, "toy", gen_len=12, seed=1, batch_size=1,
                             decode_options=opts)
    assert together[1]["draft"] == alone[0]["draft"] and together != plain
    with pytest.raises(ValueError, match="unknown decode option 'top_p'"):
        evaluate_samples(model, tok, samples, budget, "toy", gen_len=12, decode_options={"top_p": 0.9})
    with pytest.raises(ValueError, match="stop_ids: token id 5000 is outside the vocabulary"):
        evaluate_samples(model, tok, samples, budget, "toy", gen_len=12, decode_options={"stop_ids": [5000]})


def test_eval_actor_passes_the_options_to_every_decode(checkpoint):
    """The Ray Data UDF, called in-process: what each actor decodes with."""
    samples = load_samples("toy", 2)
    budget = Budget.of(4, 0, gen_len=12)
    batch = {"budget": np.asarray([budget.label] * 2, dtype=object), "index": np.arange(2),
             "sample": np.asarray([__import__("json").dumps(s) for s in samples], dtype=object)}
    args = dict(checkpoint=str(checkpoint), task="toy", budgets=[budget.__dict__], seed=0, batch_size=2,
                threshold=None, block_size=None, grade_timeout_s=5.0)
    plain = EvalActor(**args)(batch)["record"]
    no_end = EvalActor(**args, decode_options={"logits_eos_inf": True})(batch)["record"]
    model, tok = load_eval_model(checkpoint, device="cpu")
    direct = evaluate_samples(model, tok, samples, budget, "toy", seed=0, decode_options={"logits_eos_inf": True})
    assert [__import__("json").loads(r)["draft"] for r in no_end] == [r["draft"] for r in direct]
    assert list(no_end) != list(plain)


# ---------------------------------------------------------------- Serve request models and replies


LIMITS = Limits.from_args(ServeArgs(checkpoint="x"), max_positions=256, vocab_size=512)


def refused(model_cls, body) -> ApiError:
    try:
        req = model_cls.model_validate(body)
    except ValidationError as e:
        return describe_validation_errors(e.errors())
    try:
        decode_config(req, 8, 10, LIMITS, "max_new_tokens")
    except ApiError as e:
        return e
    raise AssertionError(f"{body} was accepted")


@pytest.mark.parametrize("extra, param", [
    ({"remasking": "top_k"}, "remasking"),
    ({"cfg_scale": -1}, "cfg_scale"),
    ({"cfg_scale": "2"}, "cfg_scale"),
    ({"logits_eos_inf": 1}, "logits_eos_inf"),
    ({"stop_token_ids": [-1]}, "stop_token_ids[0]"),
    ({"stop_token_ids": [512]}, "stop_token_ids"),
    ({"remasking": "random", "threshold": 0.9}, "threshold"),
])
def test_api_refuses_bad_options_with_a_400_naming_the_field(extra, param):
    for cls, body in ((RefineRequest, {"prompt": "hi"}),
                      (ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})):
        err = refused(cls, {**body, **extra})
        assert (err.status, err.param) == (400, param), (cls.__name__, extra, err.message)
        assert err.message


def test_api_options_become_the_decode_config():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "remasking": "random", "cfg_scale": 1.5,
            "logits_eos_inf": True, "confidence_eos_eot_inf": True, "stop_token_ids": [7, 8], "temperature": 0.5}
    cfg = decode_config(ChatCompletionRequest.model_validate(body), 8, 10, LIMITS, "max_tokens")
    assert (cfg.remasking, cfg.cfg_scale, cfg.logits_eos_inf, cfg.confidence_eos_eot_inf, cfg.stop_ids) == \
        ("random", 1.5, True, True, (7, 8))
    plain = decode_config(RefineRequest.model_validate({"prompt": "hi"}), 8, 10, LIMITS, "max_new_tokens")
    assert plain == DecodeConfig(gen_len=8, mask_steps=plain.mask_steps, edit_steps=plain.edit_steps)


def test_a_stop_id_or_eot_ends_the_reply_with_finish_reason_stop(model_and_tokenizer):
    _, tok = model_and_tokenizer
    sp = special_ids(tok)
    word = tok.encode(" total", add_special_tokens=False)
    result = DecodeResult(output_ids=word + [42] + word, draft_ids=word)
    cfg = DecodeConfig(gen_len=8, stop_ids=(42,))
    out = Outcome.build(result, cfg, tok, sp, prompt_len=3, timing={})
    assert (out.text, out.finish_reason, out.completion_tokens) == (" total", "stop", len(word))
    assert out.budget["stop_token_ids"] == [42] and out.budget["remasking"] == "low_confidence"
    free = Outcome.build(result, DecodeConfig(gen_len=8), tok, sp, prompt_len=3, timing={})
    assert free.finish_reason == "length" and len(free.text) > len(out.text)
    assert chat_prompt_ids(tok, prompt="hi")  # the tokenizer is a chat tokenizer (sanity)
