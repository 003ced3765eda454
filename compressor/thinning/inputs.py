"""The example input thinning's public functions accept: a tensor, a sample shape, or (as
Distiller's ``remove_filters(..., dataset, ...)``) a dataset name, resolved here to its sample shape
so the graph layer below only ever sees tensors and shapes."""
from __future__ import annotations

from typing import Sequence, Union

import torch

from ..errors import ThinningError

ExampleInput = Union[torch.Tensor, Sequence[int], str, None]


def sample_input(example_input: ExampleInput) -> Union[torch.Tensor, Sequence[int], None]:
    """``example_input`` with a dataset name replaced by the shape of one of its samples."""
    if not isinstance(example_input, str):
        return example_input
    # Lazily: the dataset table lives with the model zoo, which is slow to import and not needed
    # by callers that give shapes.
    from ..models.registry import DATASETS
    key = example_input.lower()
    if key not in DATASETS:
        raise ThinningError(f"unknown dataset '{example_input}' for the example input; known: "
                            f"{', '.join(sorted(DATASETS))} (or pass a sample shape such as "
                            f"(3, 32, 32), or a tensor)")
    return tuple(DATASETS[key].input_shape)
