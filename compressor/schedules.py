"""Target sparsity as a pure function of time.

A schedule maps the index of a pruning event (0 for the first epoch at which the policy fires, n-1
for the last) to a sparsity level. Being pure, it needs no state to resume: the policy knows from the
epoch which event it is at.
"""
from __future__ import annotations


def agp_sparsity(initial: float, final: float, event: int, n_events: int) -> float:
    """Zhu & Gupta's cubic gradual-pruning target at the ``event``-th of ``n_events`` pruning steps.

    s_t = s_f + (s_i - s_f) * (1 - k / (n - 1))**3, so the first step prunes to ``initial`` and the
    last to exactly ``final``. With Distiller's range form (starting_epoch, ending_epoch, frequency)
    the events are epochs start + k*frequency and (t - t0) / span == k / (n - 1), the same formula;
    the same indexing also gives an ``epochs: [...]`` list a meaning (Distiller crashed there).
    """
    if n_events <= 1:
        return final
    k = min(max(event, 0), n_events - 1)
    return final + (initial - final) * (1.0 - k / (n_events - 1)) ** 3


def agp_sparsity_at_epoch(initial: float, final: float, epoch: int, starting_epoch: int,
                          ending_epoch: int, frequency: int) -> float:
    """Distiller's epoch form: span = ((end - start - 1) // freq) * freq, t clamped into the span."""
    span = ((ending_epoch - starting_epoch - 1) // frequency) * frequency
    if span <= 0:
        return final
    t = min(max(epoch - starting_epoch, 0), span)
    return final + (initial - final) * (1.0 - t / span) ** 3
