"""A policy that counts the epoch events it gets, with the counts in its state: a resumed run
that prunes an epoch twice, skips an epoch's end or loses the scheduler's state counts differently."""
from __future__ import annotations

from compressor import ScheduledTrainingPolicy


class EventCounter(ScheduledTrainingPolicy):
    def __init__(self):
        super().__init__()
        self.begins, self.ends = [], []

    def on_epoch_begin(self, ctx):
        self.begins.append(ctx.epoch)

    def on_epoch_end(self, ctx):
        self.ends.append(ctx.epoch)

    def state_dict(self):
        return {"begins": list(self.begins), "ends": list(self.ends)}

    def load_state_dict(self, state):
        self.begins, self.ends = list(state["begins"]), list(state["ends"])


def counted(scheduler, epochs: int):
    """Add an ``EventCounter`` for ``epochs`` epochs to ``scheduler``; returns the scheduler."""
    scheduler.add_policy(EventCounter(), epochs=list(range(epochs)))
    return scheduler


def counts(scheduler):
    found = [p for p in scheduler.ordered if isinstance(p, EventCounter)]
    return found[0].begins, found[0].ends
