"""Small networks the tests share: ``TinyNet`` (Distiller-style names, 1x8x8 input) and
``Untraceable`` (data-dependent control flow, which torch.fx cannot trace)."""
from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> relu -> pool -> fc, with Distiller-style names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class Untraceable(nn.Module):
    """Branches on the input's values, so torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


def tiny_llama(layers: int = 2, vocab: int = 64, seed: int = 0) -> nn.Module:
    """A random Hugging Face Llama (hidden 32, MLP 64, 4 query / 2 key-value heads) in eval mode:
    the layer names of real decoders (``model.layers.N.self_attn.q_proj`` ...) at test size.
    Needs transformers (imported here, so the other helpers do not)."""
    import transformers
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=layers, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()
