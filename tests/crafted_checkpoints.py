"""Crafted checkpoints for the 6xx bad-input cases: valid torch files with values of the wrong type.

Each starts from a real simplenet_mnist checkpoint (SGD with momentum state, one mask) and changes
one field, dropping the tensor digest as someone crafting a file would.
"""
import torch

from compressor.checkpoint import save_checkpoint
from compressor.models import create_model
from compressor.scheduler import CompressionScheduler

EDITS = {
    "epoch_text": lambda c: c.update(epoch="three"),
    "epoch_negative": lambda c: c.update(epoch=-7),
    "extras_list": lambda c: c.update(extras=["resume_epoch", 2]),
    "lr_text": lambda c: c["optimizer_state_dict"]["param_groups"][0].update(lr="0.1"),
    "momentum_shape": lambda c: next(iter(c["optimizer_state_dict"]["state"].values())).update(
        momentum_buffer=torch.zeros(2, 2)),
    "masks_int": lambda c: c["compression_sched"].update(masks_dict=7),
    "mask_half": lambda c: c["compression_sched"]["masks_dict"]["masks"].update(
        {"fc1.weight": torch.full(tuple(c["state_dict"]["fc1.weight"].shape), 0.5)}),
    "resume_epoch_negative": lambda c: c["extras"].update(resume_epoch=-3),
    "batch_size_zero": lambda c: c["extras"].update(resume_minibatch=5, resume_batch_size=0),
    "meters_text": lambda c: c["extras"].update(resume_minibatch=5, resume_meters={"loss": ["2.3", 80]}),
    "meters_components_list": lambda c: c["extras"].update(
        resume_minibatch=5, resume_meters={"loss": [2.3, 80], "components": [1, 2]}),
    # valid: stopped inside epoch 1 after 5 minibatches of 16 (resumed with another -b: refused)
    "mid_epoch_b16": lambda c: c["extras"].update(resume_minibatch=5, resume_batch_size=16,
                                                  resume_samples=80),
}


def make_crafted(folder) -> dict:
    """{'ckpt_crafted_<name>': path} for every edit in ``EDITS``."""
    model = create_model("simplenet_mnist")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()   # creates the momentum buffers
    sched = CompressionScheduler(model)
    sched.store.set("fc1.weight", torch.ones_like(model.fc1.weight))
    base = str(folder / "crafted_base.pth.tar")
    save_checkpoint(base, model, opt, sched, arch="simplenet_mnist", dataset="digits", epoch=0,
                    extras={"resume_epoch": 1})
    out = {}
    for name, edit in EDITS.items():
        ckpt = torch.load(base, weights_only=True)
        del ckpt["tensor_sha256"]
        edit(ckpt)
        path = folder / f"crafted_{name}.pth.tar"
        torch.save(ckpt, path)
        out[f"ckpt_crafted_{name}"] = str(path)
    return out
