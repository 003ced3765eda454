"""The event protocol: one StepContext per event, former-signature policies adapted with a warning,
validated policy options, the public ``attach`` hook and the LR resume helpers."""
import warnings

import pytest
import torch
from torch import nn

import compressor
from compressor.errors import ComponentArgError, ScheduleError
from compressor.events import LossComponent, PolicyLoss, ScheduledTrainingPolicy, StepContext
from compressor.lr_schedulers import MultiStepMultiGammaLR, load_scheduler_state, resume_position
from compressor.policies import PruningPolicy
from compressor.policy_options import PolicyOptions
from compressor.pruners import AutomatedGradualPruner, PruneContext


class Recorder(ScheduledTrainingPolicy):
    """Records what each event's context holds; adds ``term`` to the loss."""

    def __init__(self, term=None):
        super().__init__()
        self.seen, self.term, self.attached = [], term, 0

    def attach(self, store, model):
        self.attached += 1

    def on_epoch_begin(self, ctx):
        self.seen.append(("epoch_begin", ctx.epoch, ctx.minibatch_id, ctx.optimizer))

    def on_minibatch_begin(self, ctx):
        self.seen.append(("mb_begin", ctx.epoch, ctx.minibatch_id, ctx.minibatches_per_epoch))

    def before_backward_pass(self, ctx):
        self.seen.append(("backward", ctx.loss.item()))
        if self.term is not None:
            return PolicyLoss(ctx.loss + self.term, [LossComponent("t", torch.tensor(self.term))])
        return None

    def before_parameter_optimization(self, ctx):
        self.seen.append(("param_opt", ctx.minibatch_id))

    def on_minibatch_end(self, ctx):
        self.seen.append(("mb_end", ctx.minibatch_id, ctx.store is not None, ctx.model is not None))

    def on_epoch_end(self, ctx):
        self.seen.append(("epoch_end", ctx.epoch, ctx.metrics))


def six_events(scheduler, epoch, optimizer=None, loss=1.0):
    scheduler.on_epoch_begin(epoch, optimizer)
    scheduler.on_minibatch_begin(epoch, 0, 3, optimizer)
    out = scheduler.before_backward_pass(epoch, 0, 3, torch.tensor(loss), optimizer)
    scheduler.before_parameter_optimization(epoch, 0, 3, optimizer)
    scheduler.on_minibatch_end(epoch, 0, 3, optimizer)
    scheduler.on_epoch_end(epoch, optimizer, metrics={"min": 0.5})
    return out


def test_each_event_hands_one_context_with_its_fields():
    scheduler = compressor.CompressionScheduler(nn.Linear(2, 2))
    policy = Recorder()
    scheduler.add_policy(policy, epochs=[1])
    opt = object()
    six_events(scheduler, 0, opt)                        # not scheduled: nothing
    assert policy.seen == []
    six_events(scheduler, 1, opt, loss=2.0)
    assert policy.seen == [("epoch_begin", 1, None, opt), ("mb_begin", 1, 0, 3), ("backward", 2.0),
                           ("param_opt", 0), ("mb_end", 0, True, True),
                           ("epoch_end", 1, {"min": 0.5})]


def test_events_reach_only_the_policies_that_handle_them():
    """The scheduler skips a policy on events it leaves to the base class's no-op, and still calls
    an override on the class or on the instance."""
    class OnlyEnd(ScheduledTrainingPolicy):
        def on_minibatch_end(self, ctx):
            self.ended = ctx.minibatch_id

    scheduler = compressor.CompressionScheduler(nn.Linear(2, 2))
    quiet, instance = OnlyEnd(), ScheduledTrainingPolicy()
    instance.on_minibatch_begin = lambda ctx: setattr(instance, "began", ctx.minibatch_id)
    scheduler.add_policy(quiet, epochs=[0])
    scheduler.add_policy(instance, epochs=[0])
    assert scheduler._handlers["on_minibatch_end"][0] == [quiet]
    assert scheduler._handlers["on_minibatch_begin"][0] == [instance]
    assert scheduler._handlers["before_backward_pass"].get(0) is None
    six_events(scheduler, 0)
    assert (quiet.ended, instance.began) == (0, 0)


def test_minibatch_events_share_one_context_and_each_minibatch_gets_its_own():
    seen = []

    class Keep(ScheduledTrainingPolicy):
        def on_minibatch_begin(self, ctx):
            seen.append(ctx)

        def before_parameter_optimization(self, ctx):
            seen.append(ctx)

        def on_minibatch_end(self, ctx):
            seen.append(ctx)

    scheduler = compressor.CompressionScheduler(nn.Linear(2, 2))
    scheduler.add_policy(Keep(), epochs=[0, 1])
    opt = object()
    for epoch, mb in [(0, 0), (0, 1), (1, 1)]:
        scheduler.on_minibatch_begin(epoch, mb, 3, opt)
        scheduler.before_parameter_optimization(epoch, mb, 3, opt)
        scheduler.on_minibatch_end(epoch, mb, 3, opt)
    assert [(c.epoch, c.minibatch_id) for c in seen] == [(0, 0)] * 3 + [(0, 1)] * 3 + [(1, 1)] * 3
    assert seen[0] is seen[2] and seen[3] is not seen[0] and seen[6] is not seen[3]
    scheduler.on_minibatch_end(1, 1, 3, object())       # another optimizer: a new context
    assert seen[-1] is not seen[6] and seen[-1].optimizer is not opt


def test_each_policy_sees_the_loss_with_the_terms_before_it():
    scheduler = compressor.CompressionScheduler(nn.Linear(2, 2))
    a, b = Recorder(term=10.0), Recorder(term=100.0)
    scheduler.add_policy(a, epochs=[0])
    scheduler.add_policy(b, epochs=[0])
    out = six_events(scheduler, 0, loss=1.0)
    assert a.seen[2] == ("backward", 1.0) and b.seen[2] == ("backward", 11.0)
    assert out.item() == 111.0


def test_step_context_with_loss_copies_everything_else():
    ctx = StepContext(3, 4, 5, "store", "model", "opt", 1.0, {"min": 2})
    other = ctx.with_loss(7.0)
    assert (other.epoch, other.minibatch_id, other.minibatches_per_epoch, other.store, other.model,
            other.optimizer, other.loss, other.metrics) == (3, 4, 5, "store", "model", "opt", 7.0,
                                                            {"min": 2})
    assert ctx.loss == 1.0
    with pytest.raises(AttributeError):
        ctx.extra = 1                                    # slots: no stray attributes


def test_former_positional_signatures_still_work_with_a_deprecation_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        class Old(ScheduledTrainingPolicy):
            def __init__(self):
                super().__init__()
                self.seen = []

            def on_epoch_begin(self, epoch, store, model, optimizer=None):
                self.seen.append(("epoch_begin", epoch, optimizer))

            def before_backward_pass(self, epoch, minibatch_id, minibatches_per_epoch, loss, store,
                                     model, optimizer=None):
                return PolicyLoss(loss + 1, [])

            def on_minibatch_end(self, epoch, minibatch_id, minibatches_per_epoch, store, model,
                                 optimizer=None):
                self.seen.append(("mb_end", epoch, minibatch_id, minibatches_per_epoch))

            def on_epoch_end(self, epoch, store, model, optimizer=None, metrics=None):
                self.seen.append(("epoch_end", epoch, metrics))

    messages = sorted(str(w.message).split(" takes")[0].split(".")[-1] for w in caught
                      if w.category is DeprecationWarning)
    assert messages == ["before_backward_pass", "on_epoch_begin", "on_epoch_end", "on_minibatch_end"]
    assert any(str(w.message).endswith("Old.on_minibatch_end takes the former positional event "
                                       "arguments; take one StepContext instead: "
                                       "def on_minibatch_end(self, ctx) (see docs/own-training-loop.md)")
               for w in caught)
    scheduler = compressor.CompressionScheduler(nn.Linear(2, 2))
    policy = Old()
    scheduler.add_policy(policy, epochs=[2])
    assert six_events(scheduler, 2, "opt", loss=5.0).item() == 6.0
    assert policy.seen == [("epoch_begin", 2, "opt"), ("mb_end", 2, 0, 3),
                           ("epoch_end", 2, {"min": 0.5})]
    policy.on_epoch_begin(9, scheduler.store, scheduler.model)   # a direct call of the former form
    assert policy.seen[-1] == ("epoch_begin", 9, None)

    class Newer(Old):                                    # a new-style subclass calling super()
        def on_epoch_begin(self, ctx):
            super().on_epoch_begin(ctx)
            self.seen.append("newer")

    newer = Newer()
    newer.on_epoch_begin(StepContext(4, None, None, None, None))
    assert newer.seen == [("epoch_begin", 4, None), "newer"]


def test_new_style_policies_define_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Fine(ScheduledTrainingPolicy):
            def on_epoch_end(self, ctx):
                pass
    assert Fine.on_epoch_end.__name__ == "on_epoch_end"


def test_load_state_dict_attaches_every_policy():
    scheduler = compressor.CompressionScheduler(nn.Linear(2, 2))
    policy = Recorder()
    scheduler.add_policy(policy, epochs=[0])
    assert policy.attached == 0
    scheduler.load_state_dict(scheduler.state_dict())
    assert policy.attached == 1


# -- options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    ({"keep_masks": True}, r"^keep_masks: unknown policy arg \(did you mean 'keep_mask'\?\); valid: levels, "),
    ({"keep_mask": 1}, r"^keep_mask: must be bool; got 1$"),
    ({"mini_batch_pruning_frequency": True}, r"^mini_batch_pruning_frequency: must be int; got True$"),
    ({"mini_batch_pruning_frequency": -1}, r"^mini_batch_pruning_frequency: must be >= 0 \(0 disables\); got -1$"),
    ({"levels": [0.5]}, r"^levels: must be dict; got \[0\.5\]$"),
    ({"mask_gradients": True}, r"^mask_gradients: mask_gradients needs mask_on_forward_only: True"),
])
def test_policy_options_reject_bad_args(args, message):
    with pytest.raises(ComponentArgError, match=message):
        PolicyOptions.from_args(args)
    pruner = AutomatedGradualPruner("p", 0.1, 0.5, ["weight"])
    with pytest.raises(ValueError, match=message):      # the policy's constructor validates too
        PruningPolicy(pruner, args)


def test_policy_options_are_typed_from_the_schedule_to_the_pruner():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    sched = {"version": 1,
             "pruners": {"lvl": {"class": "SparsityLevelParameterPruner", "levels": {"*": 0.25}}},
             "policies": [{"pruner": {"instance_name": "lvl",
                                      "args": {"levels": {"module.0.weight": 0.5}, "keep_mask": True,
                                               "mini_batch_pruning_frequency": 2}},
                           "epochs": [0]}]}
    scheduler = compressor.dict_config(model, None, sched, example_input=(4,))
    policy = scheduler.ordered[0]
    assert policy.options == PolicyOptions(levels={"0.weight": 0.5}, keep_mask=True,
                                           mini_batch_pruning_frequency=2)
    assert policy.args["keep_mask"] is True             # the former dict view
    scheduler.on_epoch_begin(0)
    assert scheduler.store.sparsity("0.weight") == 0.5 and scheduler.store.sparsity("1.weight") == 0.25


def test_schedule_errors_keep_file_line_and_key():
    sched = {"pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1,
                               "final_sparsity": 0.5, "weights": ["weight"]}},
             "policies": [{"pruner": {"instance_name": "p", "args": {"use_double_copies": "yes"}},
                           "epochs": [0]}]}
    with pytest.raises(ScheduleError, match=r"policies\[0\]\.pruner\.args\.use_double_copies: must be "
                                            r"bool; got 'yes'"):
        compressor.dict_config(nn.Linear(2, 2), None, sched)


def test_prune_context_takes_options_or_the_former_args_mapping():
    assert PruneContext(0, args={"levels": {"w": 0.25}}).options.levels == {"w": 0.25}
    assert PruneContext(0).options == PolicyOptions()
    with pytest.raises(TypeError, match=r"^PruneContext takes options or args"):
        PruneContext(0, args={"keep_mask": True}, options=PolicyOptions())
    with pytest.raises(ComponentArgError, match=r"^keep_mask: must be bool"):
        PruneContext(0, args={"keep_mask": "no"})


# -- LR resume --------------------------------------------------------------------------------

def _opt(lr=0.1):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=lr)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
@pytest.mark.parametrize("make", [
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    lambda o: MultiStepMultiGammaLR(o, milestones=[1, 3], gammas=[0.5, 0.25]),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6),
])
def test_resume_position_continues_the_uninterrupted_schedule(make):
    full_opt = _opt()
    full = make(full_opt)
    lrs = []
    for _ in range(5):
        full.step()
        lrs.append(full_opt.param_groups[0]["lr"])
    # a resumed run after 3 steps: its optimizer holds the lr reached; the rebuilt scheduler
    # must leave it there and then step on exactly as the uninterrupted one (same arithmetic)
    opt = _opt()
    opt.param_groups[0]["lr"] = lrs[2]
    opt.param_groups[0]["initial_lr"] = 0.1
    sched = make(opt)
    resume_position(sched, 3, [lrs[2]])
    assert opt.param_groups[0]["lr"] == lrs[2] and sched.get_last_lr() == [lrs[2]]
    assert sched.last_epoch == 3
    for expected in lrs[3:]:
        sched.step()
        assert opt.param_groups[0]["lr"] == expected


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_load_scheduler_state_sets_the_optimizer_lr_too():
    opt = _opt()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    sched.step()
    state = sched.state_dict()
    fresh_opt = _opt()
    fresh = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=1, gamma=0.5)
    load_scheduler_state(fresh, state)
    assert fresh_opt.param_groups[0]["lr"] == 0.025 and fresh.last_epoch == 2
