"""Attention heads alone on torchvision's transformers: how much removing heads saves, exactly.

For each ``model:size`` given, with random weights (torchvision's ViT starts with a zero
classifier, which is drawn N(0, 0.02) so the output is not identically zero): the ``fraction`` of
each attention layer's heads with the lowest L1 norm (``compressor.thinning.heads.class_masks``,
what ``AttentionHeadPruner`` masks) are zeroed, ``contract_model`` removes them, and the thinned
output is compared with the masked one in float64 (relative error of the output's scale). Params
and MACs (``model_performance_summary``, attention matmuls included) before and after. Needs
torchvision; one thread.

    python -m benchmarks.bench_tv_heads 0.3 vit_b_16:224 swin_t:224 swin_v2_t:256 maxvit_t:224
"""
from __future__ import annotations

import sys
import time

import torch


def main(argv) -> None:
    import torchvision

    from compressor.graph import analyze_graph
    from compressor.summary import model_performance_summary
    from compressor.thinning import contract_model
    from compressor.thinning.heads import apply_masks, attention_outputs, class_masks

    if len(argv) < 2:
        raise SystemExit("usage: python -m benchmarks.bench_tv_heads FRACTION MODEL:SIZE ...")
    torch.set_num_threads(1)
    frac = float(argv[0])
    print(f"fraction of heads per attention layer: {frac}; torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}")
    print("| model | input | attention layers | heads before -> after | params ratio | "
          "MACs ratio | rel. error | thin s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec in argv[1:]:
        name, size = spec.split(":")
        torch.manual_seed(0)
        m = getattr(torchvision.models, name)().eval().double()
        x = torch.randn(1, 3, int(size), int(size), dtype=torch.float64)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.startswith("heads.") and not p.any():
                    torch.nn.init.normal_(p, std=0.02)
        p0 = sum(p.numel() for p in m.parameters())
        mac0 = int(model_performance_summary(m, x)["MACs"].sum())
        readers = attention_outputs(m)

        def heads() -> int:
            return sum(int(getattr(mod, "num_heads", None) or getattr(mod, "n_heads"))
                       for n, mod in m.named_modules()
                       if any(r.startswith(n + ".") and r.count(".") == n.count(".") + 1
                              for r in readers))

        h0 = heads()
        t = time.time()
        g = analyze_graph(m, x)
        apply_masks(m, class_masks(g, m, frac, readers=readers))
        with torch.no_grad():
            ref = m(x)
        contract_model(m, x)
        dt = time.time() - t
        with torch.no_grad():
            err = ((m(x) - ref).abs().max() / ref.abs().max()).item()
        p1 = sum(p.numel() for p in m.parameters())
        mac1 = int(model_performance_summary(m, x)["MACs"].sum())
        print(f"| {name} | {size} | {len(readers)} | {h0} -> {heads()} | {p1 / p0:.3f} | "
              f"{mac1 / mac0:.3f} | {err:.1e} | {dt:.1f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
