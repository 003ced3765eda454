"""Quantization: quantization-aware training from the schedule, int8 post-training quantization.

API (for the app and other modules):

- ``QUANTIZERS`` (``compressor.registry``): ``QuantAwareTrainRangeLinearQuantizer``,
  ``DorefaQuantizer``, ``PACTQuantizer``; built from a schedule's ``quantizers:`` section and
  fired by a ``quantizer:`` policy (``QuantizationPolicy``), which installs fake quantization in
  place at its starting epoch (same modules, parameters and state_dict keys).
- ``find_quantizer(scheduler)``: the scheduler's quantizer or None; ``quantizer.release()``
  removes its fake quantization (before exporting).
- ``ptq.quantize_int8(model, example, batches, ...)`` -> a converted torch.export GraphModule
  (torchao PT2E, X86 inductor quantizer); ``ptq.save_int8(gm, example, path, meta)`` writes
  ``<path>.pt2`` and ``<path>.json``; ``ptq.load_int8(path)`` reads it back (no pickled code).
  ``ptq`` imports torchao lazily: importing this package needs only torch.
"""
from . import quantizers as _quantizers  # noqa: F401  (registers the quantizers)
from .policy import QuantizationPolicy
from .quantizers import (DorefaQuantizer, PACTQuantizer, QuantAwareTrainRangeLinearQuantizer,
                         Quantizer)


def find_quantizer(scheduler):
    """The quantizer of ``scheduler``'s quantizer policy, or None."""
    for policy in getattr(scheduler, "ordered", []):
        if isinstance(policy, QuantizationPolicy):
            return policy.quantizer
    return None


__all__ = ["QuantizationPolicy", "Quantizer", "QuantAwareTrainRangeLinearQuantizer",
           "DorefaQuantizer", "PACTQuantizer", "find_quantizer"]
