"""Build a ready schedule file against a zoo model and run its policies' first and last epochs
(shared by test_schedules_dir, for schedules/, and test_docs, for the schedules in docs/)."""
from __future__ import annotations

import math

import torch

import compressor
from compressor.models import create_model, dataset_of, input_shape
from compressor.policies import LRPolicy, PruningPolicy, RegularizationPolicy
from compressor.pruners import AutomatedGradualPruner
from helpers.loop import train


def exercise(model, scheduler, optimizer, epochs, batches=2, batch_size=2, shape=None) -> set:
    """Run the six scheduler events over random data at ``epochs``; return the loss components'
    names."""
    shape = shape or input_shape(dataset_of("lenet5"))
    g = torch.Generator().manual_seed(0)

    def data(epoch):   # fresh batches every epoch, drawn from one generator in step order
        return [(torch.randn(batch_size, *shape, generator=g),
                 torch.randint(0, 10, (batch_size,), generator=g)) for _ in range(batches)]

    logged = train(model, optimizer, scheduler, data, epochs)
    return {c.name for step in logged for c in step}


def build_and_exercise(path, arch):
    """Build ``path`` for ``arch`` and run each policy's first and last firing epochs."""
    torch.manual_seed(0)
    model = create_model(arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scheduler = compressor.file_config(model, optimizer, str(path))
    policies = scheduler.ordered
    assert policies, f"{path}: the schedule has no policies"
    epochs = sorted({e for p in policies for e in (p.epochs[0], p.epochs[-1])})
    components = exercise(model, scheduler, optimizer, epochs,
                          shape=input_shape(dataset_of(arch)))
    params = dict(model.named_parameters())
    for policy in policies:
        if isinstance(policy, PruningPolicy):
            assert any(n in scheduler.masks for n in policy.pruner.param_names), \
                f"{policy.name} installed no mask"
            if type(policy.pruner) is AutomatedGradualPruner and not policy.forward_only:
                for name in policy.pruner.param_names:   # AGP ends exactly at final_sparsity
                    numel = params[name].numel()
                    want = math.floor(policy.pruner.final_sparsity * numel + 1e-6)
                    assert int((params[name] == 0).sum()) >= want, name
        elif isinstance(policy, RegularizationPolicy):
            assert policy.loss_name in components
        elif isinstance(policy, LRPolicy):
            assert optimizer.param_groups[0]["lr"] >= 0
    return model, scheduler
