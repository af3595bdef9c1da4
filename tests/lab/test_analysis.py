"""gpt_jax.lab.analysis (docs/analysis.md): each measured claim computed at a tiny size, and
checked against what the claim says (not against a stored number)."""
import json
import math

import jax
import pytest

import gpt_jax.cli.analysis as analysis_cli
import gpt_jax.lab.analysis as analysis

import gpt_jax.lab.analysis_hf as analysis_hf
import gpt_jax.lab.analysis_speed as analysis_speed
from gpt_jax.model.config import GPTConfig
from gpt_jax.errors import UserError
from gpt_jax.model.gpt import init_params

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

CFG = analysis_speed.TINY_SPEED_CFG    # 2 layers x 32, vocab 256: one compile cache


def test_growing_cache_gives_our_tokens_with_a_compile_per_length():
    params = init_params(CFG, jax.random.key(0))
    r = analysis_speed.cache_speed(params, CFG, prompt_len=8, new_tokens=4, cold_tokens=4,
                                   repeats=1)["decoders"]
    assert set(r) == {"ours", "growing", "uncached", "hf_dynamic_cache", "growing_first_call"}
    assert all(row["same_tokens_as_ours"] for row in r.values())
    assert r["growing_first_call"]["compiles"] == 3    # one per cache length: shapes grow
    assert r["growing"]["compiles"] == 3               # warm calls reuse those programs
    assert r["ours"]["time_over_ours"] == 1.0


def test_tied_and_untied_counts_differ_by_the_head():
    r = analysis.params_section(CFG)
    assert r["ours_tied"] == r["hf_tied"] and r["hf_lm_head_is_wte"]
    assert r["hf_untied"] - r["hf_tied"] == CFG.vocab_size * CFG.n_embd == r["head_params"]
    assert r["ours_untied"] == r["hf_untied"]
    assert r["nanogpt_non_embedding"] == r["ours_tied"] - CFG.block_size * CFG.n_embd
    assert r["flops_per_token_ours"] == r["flops_per_token_nanogpt"]


def test_nanogpt_printed_counts_and_mfu_flops_at_gpt2_size():
    """docs/analysis.md quotes these: nanoGPT's get_num_params (no wpe) at vocab 50304, with
    GPTConfig's bias=True and train.py's bias=False, and estimate_mfu's 6N + 12LHQT."""
    r = analysis.params_section(analysis.GPT2, hf=False)
    assert r["nanogpt_printed_vocab_50304"] == 123_689_472
    assert r["nanogpt_printed_train_py"] == 123_689_472 - 102_144   # less every bias
    assert r["flops_per_token_ours"] == r["flops_per_token_nanogpt"] == 855_166_464  # T = 1024


def test_hf_skips_the_mask_where_the_doc_says_and_still_decodes_right():
    r = analysis_hf.hf_behaviour_section()
    m, P = r["masks"], r["prompt_len"]
    assert r["default_attn_implementation"] == "sdpa"
    assert m["sdpa_prefill"] == m["sdpa_decode"] == {"mask": None}      # is_causal decides
    assert m["sdpa_decode_with_padding"] == {"mask": "bool", "shape": [1, 1, 1, P + 1],
                                             "min": 0.0, "open": P}    # the pad is shut
    static = m["sdpa_decode_static_cache"]                            # the whole buffer
    assert static["mask"] == "bool" and static["shape"][-1] > P + 1 and static["open"] == P + 1
    assert m["eager_prefill"]["min"] == r["float32_min"]               # additive finfo.min
    assert m["eager_prefill"]["open"] == P * (P + 1) // 2
    assert r["decode_step_vs_full_forward_max_abs"] < 1e-4
    assert r["past_key_values_warns"] and r["flex_attention_refused"]
    assert r["logits_to_keep_1_rows"] == 1
    assert r["num_items_in_batch_loss_over_mean"] == pytest.approx(0.5)   # P targets / 2P
    assert r["seqcls_logits_vs_score_of_last_non_pad_max_abs"] < 1e-6    # the last real token
    assert r["seqcls_logits_vs_score_of_first_max_abs"] > 1e-3
    assert r["first_position_hidden_change_when_later_tokens_change"] == 0   # blind: causal
    assert r["sampling_processors"] == ["RepetitionPenaltyLogitsProcessor",
                                        "TemperatureLogitsWarper", "TopKLogitsWarper",
                                        "TopPLogitsWarper", "MinPLogitsWarper"]


def test_init_std_follows_gpt2_and_hf():
    cfg = GPTConfig(n_layer=4, n_head=2, n_embd=64, block_size=32, vocab_size=512)
    r = analysis.init_section(cfg, seq=8)
    for who in ("ours", "hf"):
        for group, s in r[who].items():
            if s["theory"]:
                assert s["std"] == pytest.approx(s["theory"], rel=0.05), (who, group)
            else:
                assert s["std"] == 0 and s["mean"] == 0, (who, group)
    assert r["ours"]["mlp.c_proj.kernel"]["theory"] == pytest.approx(0.02 / math.sqrt(8))
    res = r["residual_stream_std"]
    assert res["scaled_c_proj"][0] == res["unscaled_c_proj"][0]
    assert res["growth_unscaled"] > res["growth_scaled"]


def test_loss_shift_and_logits_match_hf():
    r = analysis.parity_section(CFG, seq=8)
    assert r["logits_max_abs_diff"] < 1e-4 * max(1.0, r["logits_std"])
    assert r["loss_max_rel_diff"] < 1e-5


def test_tied_gradient_is_the_sum_of_embedding_and_head_gradients():
    r = analysis.tying_section(CFG, seq=8)
    assert r["max_abs_diff_tied_vs_sum"] < 1e-6 * r["tied_grad_norm"] + 1e-7
    assert r["rows_touched_by_embedding"] == r["distinct_input_tokens"] < r["vocab_rows"]
    assert r["rows_touched_by_head"] == r["vocab_rows"]


def test_is_causal_masks_top_left_at_a_decode_step():
    r = analysis.masking_section()
    assert r["is_causal_equals_first_value"] and r["is_causal_max_abs_error"] > 0.1


def test_dropout_sites_and_decay_groups_match_hf():
    d = analysis.dropout_section(CFG, timed=False)
    assert d["ours_sites"] == d["expected_1_plus_3L"] == d["hf_dropout_modules"]
    r = analysis.decay_section(CFG)
    assert r["ours_decayed"] == r["hf_trainer_decayed"]
    assert r["nanogpt_ndim_rule_disagreements"] == 0
    C, L = CFG.n_embd, CFG.n_layer      # stacked: 4 biases, 2 LayerNorms x (scale, bias)
    assert r["stacked_ndim_rule_wrong_tensors"] == 8
    assert r["stacked_ndim_rule_wrong_params"] == L * (3 * C + C + 4 * C + C + 4 * C)


def test_timed_sections_compute_and_agree():
    a = analysis_speed.attention_speed((1, 16, 2, 8), repeats=1)["implementations"]
    assert len(a) == 5 and all(row["max_abs_diff"] < 1e-5 for row in a.values())
    lay = analysis_speed.layout_speed(16, 64, repeats=1)
    assert lay["same_result"] and len(lay["products"]) == 4
    lay = analysis.layout_section(CFG, timed=False)
    assert lay["ours_transposed"] == 0 and lay["ours_same_shape"] == lay["hf_tensors"]
    assert lay["nanogpt_transposed_on_import"] == 4 * CFG.n_layer


def test_cli_writes_json_and_refuses_unknown_sections(tmp_path):
    out = tmp_path / "a.json"
    assert analysis_cli.main(["--only", "masking", "--hf", "false", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["sections"]) == {"masking"} and "backend" in report["machine"]
    assert report["complete"] is True and not list(tmp_path.glob("a.json.tmp*"))
    with pytest.raises(UserError, match="unknown section"):
        analysis_cli.main(["--only", "masking,bogus"])


def test_ctrl_c_stops_the_analysis_at_once_leaving_an_incomplete_json(tmp_path):
    """Ctrl-C was swallowed inside an XLA callback: the run went on for 48 s and exited 0
    with its JSON written as if complete. A real SIGINT after the first section: exit 130
    within seconds, one last line, and the JSON holds the sections that ended,
    "complete": false."""
    import time
    from signals import Watched
    out = tmp_path / "a.json"
    with Watched("-m", "gpt_jax.cli.analysis", "--hf", "false", "--only", "params,init,tying",
                 "--json", out) as w:
        w.wait_for(lambda w: b"== params" in w.out)   # the first section ended; init is running
        time.sleep(0.5)
        took = w.stop(timeout=30)
    err = w.err.decode()
    assert w.proc.returncode == 130 and took < 5, (w.proc.returncode, took, err[-2000:])
    assert w.lines()[-1] == (f'analysis stopped by SIGINT: {out} holds the sections that ended, '
                             f'marked "complete": false') and "Traceback" not in err, err
    report = json.loads(out.read_text())    # params, perhaps init (a fast machine): not all
    assert report["complete"] is False and list(report["sections"]) in (["params"],
                                                                         ["params", "init"])
    assert b"== tying" not in w.out
