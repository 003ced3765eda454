"""Hugging Face transformers thinned exactly: per-block capture, MLP neurons, attention heads
(grouped-query attention), the head counts rewritten, and save / from_pretrained.

Tiny random BERT and Llama configs (2 layers, small widths), float64: the masked model and the
thinned one must compute the same function (``assert_same_function``). transformers is in the
``test`` extra, so CI runs these.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers.exact import assert_same_function  # noqa: E402

from compressor.errors import ThinningError  # noqa: E402
from compressor.graph import analyze_graph  # noqa: E402
from compressor.thinning import analyze, contract_model  # noqa: E402
from compressor.thinning.heads import (apply_masks, attention_outputs, class_masks,  # noqa: E402
                                       stream_readers)

pytestmark = pytest.mark.usefixtures("float64")


def bert(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=40, max_position_embeddings=16)
    cfg.update(kw)
    return transformers.BertModel(transformers.BertConfig(**cfg)).eval()


def llama(heads=4, kv=2, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=heads,
               num_key_value_heads=kv, intermediate_size=36, max_position_embeddings=16,
               head_dim=6)
    cfg.update(kw)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()


IDS = torch.tensor([[3, 7, 1, 9, 12, 5, 30], [2, 2, 8, 39, 0, 4, 11]])


def out(model, ids=IDS):
    with torch.no_grad():
        o = model(ids)
    return o.last_hidden_state if hasattr(o, "last_hidden_state") else o.logits


def prune(model, neurons=0.3, heads=0.25):
    """Mask the weakest MLP neurons and heads (L1), as the ranking does; returns the masks."""
    g = analyze_graph(model, IDS)
    att = attention_outputs(model)
    mlp = {c.module for c in g.consumers if c.module not in att} - stream_readers(g)
    masks = {**class_masks(g, model, neurons, mlp), **class_masks(g, model, heads, att)}
    apply_masks(model, masks)
    return masks


def test_bert_capture_lists_mlp_and_heads_as_thinnable():
    r = analyze(bert(), IDS)
    assert "encoder.layer.0.intermediate.dense" in r.thinnable
    assert "encoder.layer.1.attention.self.value" in r.thinnable
    assert ["encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.key.weight",
            "encoder.layer.0.attention.self.value.weight"] in r.groups
    assert "kept" in r.blocked["encoder.layer.0.attention.output.dense"]   # the residual stream


def test_llama_capture_couples_gate_and_up():
    r = analyze(llama(), IDS)
    assert ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"] in r.groups
    assert "model.layers.1.self_attn.q_proj" in r.thinnable
    assert r.error is None


@pytest.mark.parametrize("make", [bert, llama], ids=["bert", "llama"])
def test_mlp_neurons_thinned_exactly(make):
    m = make()
    prune(m, neurons=0.3, heads=0.0)
    ref = out(m)
    n0 = sum(p.numel() for p in m.parameters())
    res = contract_model(m, IDS)
    assert res.changed and sum(p.numel() for p in m.parameters()) < n0
    assert_same_function(out(m), ref)
    inter = m.encoder.layer[0].intermediate.dense if make is bert else m.model.layers[0].mlp.up_proj
    assert inter.out_features == inter.weight.shape[0] < (40 if make is bert else 36)


def test_bert_heads_thinned_exactly_and_counts_rewritten():
    m = bert()
    prune(m, neurons=0.0, heads=0.25)
    ref = out(m)
    contract_model(m, IDS)
    assert_same_function(out(m), ref)
    s = m.encoder.layer[0].attention.self
    assert (s.num_attention_heads, s.all_head_size, s.attention_head_size) == (3, 18, 6)
    assert s.query.weight.shape == (18, 24) and m.encoder.layer[0].attention.output.dense.in_features == 18


def test_llama_gqa_removes_whole_kv_groups_exactly():
    m = llama(heads=4, kv=2)
    prune(m, neurons=0.3, heads=0.5)    # one of the two key/value groups per layer
    ref = out(m)
    contract_model(m, IDS)
    assert_same_function(out(m), ref)
    a = m.model.layers[0].self_attn
    assert (a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features,
            a.o_proj.in_features, a.num_key_value_groups) == (12, 6, 6, 12, 2)


def test_query_heads_alone_are_not_removed_under_gqa():
    """One query head of a group zeroed (its o columns): the group stays (a unit is a kv head
    with all its query heads), so nothing is removed and the function is unchanged."""
    m = llama(heads=4, kv=2)
    with torch.no_grad():
        m.model.layers[0].self_attn.o_proj.weight[:, :6] = 0
    ref = out(m)
    res = contract_model(m, IDS)
    assert "model.layers.0.self_attn.q_proj" not in res.removed
    assert_same_function(out(m), ref)


def test_llama_mha_one_head_at_a_time():
    m = llama(heads=4, kv=4)
    prune(m, neurons=0.0, heads=0.25)
    ref = out(m)
    contract_model(m, IDS)
    assert_same_function(out(m), ref)
    assert m.model.layers[1].self_attn.k_proj.out_features == 18


def test_hf_model_needs_token_ids_as_example_input():
    with pytest.raises(ThinningError, match=r"cannot thin BertModel block by block without an "
                                            r"example input tensor: pass input ids"):
        analyze(bert(), (3, 32, 32))


def test_llama_saved_loads_with_from_pretrained(tmp_path):
    from compressor.hf import save_thinned
    m = llama()
    prune(m, neurons=0.3, heads=0.5)
    ref = out(m)
    contract_model(m, IDS)
    saved = save_thinned(m, str(tmp_path))
    assert saved.loads_with == "from_pretrained" and saved.widths["num_key_value_heads"] == [1, 1]
    back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float64).eval()
    assert (back.config.intermediate_size, back.config.num_attention_heads,
            back.config.num_key_value_heads, back.config.head_dim) == (25, 2, 1, 6)
    assert_same_function(out(back), ref)


def test_bert_without_heads_loads_with_load_thinned(tmp_path):
    """BertConfig derives the head size from hidden_size / num_attention_heads: a BERT that lost
    heads keeps its dense config and loads by replaying its recipes; from_pretrained refuses it."""
    from compressor.hf import load_thinned, save_thinned
    m = bert()
    prune(m)
    ref = out(m)
    contract_model(m, IDS)
    saved = save_thinned(m, str(tmp_path))
    assert saved.loads_with == "load_thinned" and "derives the head size" in saved.reason
    assert_same_function(out(load_thinned(str(tmp_path)).double()), ref)
    with pytest.raises(Exception, match="mismatch"):
        transformers.BertModel.from_pretrained(str(tmp_path))


def test_uneven_layer_widths_are_said_and_still_load(tmp_path):
    from compressor.hf import load_thinned, save_thinned
    m = llama()
    with torch.no_grad():
        m.model.layers[0].mlp.down_proj.weight[:, :5] = 0    # layer 0 only
    ref = out(m)
    contract_model(m, IDS)
    saved = save_thinned(m, str(tmp_path))
    assert saved.loads_with == "load_thinned"
    assert saved.reason.startswith("the layers have different widths (intermediate_size [31, 36])")
    assert_same_function(out(load_thinned(str(tmp_path)).double()), ref)


def test_yaml_schedule_prunes_heads_and_neurons_then_thins_exactly(write_yaml):
    """AttentionHeadPruner / MLPNeuronPruner named from YAML: after one epoch's pruning event the
    masked model thins to the same function, one kv group and 30% of neurons fewer per layer."""
    import compressor
    m = llama(heads=4, kv=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    path = write_yaml("""
pruners:
  heads: {class: AttentionHeadPruner, desired_sparsity: 0.5}
  neurons: {class: MLPNeuronPruner, desired_sparsity: 0.3}
policies:
  - {pruner: {instance_name: heads}, epochs: [0]}
  - {pruner: {instance_name: neurons}, epochs: [0]}
""")
    sched = compressor.file_config(m, opt, str(path))
    sched.on_epoch_begin(0, opt)
    ref = out(m)
    contract_model(m, IDS, store=sched)
    assert_same_function(out(m), ref)
    mlp, att = m.model.layers[1].mlp, m.model.layers[1].self_attn
    assert (mlp.up_proj.out_features, att.k_proj.out_features) == (25, 6)


def test_head_pruner_argument_errors(write_yaml):
    import compressor
    from compressor.errors import ScheduleError
    m = llama()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    path = write_yaml("pruners:\n  h: {class: AttentionHeadPruner, desired_sparsity: 1.5}\n"
                      "policies:\n  - {pruner: {instance_name: h}, epochs: [0]}\n")
    with pytest.raises(ScheduleError, match=r"desired_sparsity.*must be a number in \[0, 1\)"):
        compressor.file_config(m, opt, str(path))


def test_compute_table_counts_attention_matmuls_and_their_drop():
    """2 x heads x T x T x head_dim MACs per sample per attention layer; half after one of two
    kv groups (two of four query heads) goes."""
    from compressor.summary import model_performance_summary
    m = llama(heads=4, kv=2)

    def att(model):
        df = model_performance_summary(model, IDS)
        return df[df["Type"] == "attention (QK^T, AV)"]["MACs"].tolist()
    assert att(m) == [2 * 4 * 7 * 7 * 6] * 2
    prune(m, neurons=0.0, heads=0.5)
    contract_model(m, IDS)
    assert att(m) == [2 * 2 * 7 * 7 * 6] * 2


@pytest.mark.slow
def test_real_minilm_heads_and_neurons_thinned_like_masked(tmp_path):
    """all-MiniLM-L6-v2's real weights (optional package): 30% of neurons and 25% of heads per
    layer masked, thinned, saved and reloaded; every output equals the masked model's."""
    import os
    import zipfile
    pkg = pytest.importorskip("all_minilm_l6_v2")
    from compressor.hf import load_thinned, save_thinned
    zipfile.ZipFile(os.path.join(os.path.dirname(pkg.__file__), "model.zip")).extractall(tmp_path / "src")
    m = transformers.BertModel.from_pretrained(str(tmp_path / "src")).double().eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 1997, 1996, 5479, 102]])
    prune_real = analyze_graph(m, ids)
    att = attention_outputs(m)
    apply_masks(m, {**class_masks(prune_real, m, 0.3, {c.module for c in prune_real.consumers
                                                        if c.module not in att} -
                                  stream_readers(prune_real)),
                    **class_masks(prune_real, m, 0.25, att)})
    ref = out(m, ids)
    contract_model(m, ids)
    assert m.encoder.layer[0].attention.self.num_attention_heads == 9
    assert_same_function(out(m, ids), ref)
    save_thinned(m, str(tmp_path / "thin"))
    assert_same_function(out(load_thinned(str(tmp_path / "thin")).double(), ids), ref)
