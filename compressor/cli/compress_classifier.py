"""compress_classifier: train, compress and evaluate an image classifier from the command line.

User mistakes (unknown arch, missing data, a schedule error, an incompatible checkpoint) end with
one line on stderr and exit code 2; nothing already written is damaged (checkpoints and CSVs are
written atomically). Under ``torchrun`` it trains with DistributedDataParallel; rank 0 alone logs
and writes files.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn

from .. import checkpoint as ckpt_io
from .. import file_config, models
from ..data import load_data
from ..data.loaders import check_num_classes
from ..distributed import ElasticDDP, init_from_env
from ..errors import CompressorError
from ..scheduler import CompressionScheduler
from .best import BestScores
from .common import (UsageError, check_args, choose_seed, make_optimizer, make_run_dir, pick_device,
                     seed_everything, setup_logging)
from .epochs import Loop
from .modes import export_onnx, reinitialize, run_summaries, scratch_epochs, sensitivity, thinnify
from .parser import build_parser

log = logging.getLogger("compressor.app")


def shared_seed(args, distributed: bool) -> int:
    """The run's seed; under torchrun rank 0 chooses and every rank uses it."""
    seed = choose_seed(args)
    if distributed:
        t = torch.tensor([seed], dtype=torch.long)
        dist.broadcast(t, src=0)
        seed = int(t.item())
    return seed


def run(args: argparse.Namespace) -> int:
    check_args(args)
    env = init_from_env(args.cpu)
    distributed = env is not None
    device = env.device if distributed else pick_device(args)
    if distributed and args.batch_size % env.world_size:
        raise UsageError(f"--batch-size {args.batch_size} must divide evenly among "
                         f"{env.world_size} processes (it is the global batch)")
    seed = shared_seed(args, distributed)
    seed_everything(seed, args.deterministic)
    dataset = (args.dataset or models.dataset_of(args.arch)).lower()
    model_dataset = "mnist" if dataset == "digits" else dataset
    model = models.create_model(args.arch, model_dataset, pretrained=args.pretrained).to(device)

    if args.summary:
        setup_logging(args.verbose)
        if args.resume_from or args.exp_load_weights_from:   # summarize that checkpoint's network
            path = args.resume_from or args.exp_load_weights_from
            ckpt_io.restore(ckpt_io.read_checkpoint(path), model, arch=args.arch, path=path)
        run_summaries(args, model, model_dataset)
        return 0
    if args.export_onnx:
        setup_logging(args.verbose)
        export_onnx(args, model, model_dataset)
        return 0

    # Load everything the user named before anything is written to disk.
    start_epoch, skip, resumed, best, rows = 0, 0, None, BestScores(args.best_by), []
    optimizer = make_optimizer(args, model)
    scheduler: Optional[CompressionScheduler] = None
    if args.resume_from or args.exp_load_weights_from:
        path = args.resume_from or args.exp_load_weights_from
        resumed = ckpt_io.read_checkpoint(path)
        full = bool(args.resume_from) and not args.reset_optimizer
        if resumed.get("compression_sched") is not None:
            scheduler = CompressionScheduler(model)
        ckpt_io.restore(resumed, model, optimizer if full else None, scheduler, arch=args.arch, path=path)
        if args.scratch:   # the checkpoint only lends its (thinned) architecture
            reinitialize(model)
            scheduler = None
        if not full:   # weights only: the parameters may have been thinned, so a new optimizer
            optimizer = make_optimizer(args, model)
        else:
            extras = resumed.get("extras", {})
            start_epoch = int(extras.get("resume_epoch", int(resumed.get("epoch", -1)) + 1))
            skip = int(extras.get("resume_minibatch", 0))
            best, rows = BestScores(args.best_by, extras.get("history", [])), list(extras.get("metrics", []))
            if args.seed is None and "seed" in extras:
                seed = int(extras["seed"])
            if "rng_state" in extras:
                torch.set_rng_state(extras["rng_state"])
    if args.compress:
        state = None   # a resumed run gets every policy's state back (gates, cached thresholds ...)
        if scheduler is not None:
            state = resumed["compression_sched"] if full else scheduler.state_dict()
        scheduler = file_config(model, optimizer, args.compress,
                                resumed_epoch=start_epoch - 1 if start_epoch > 0 else None)
        if state is not None:
            scheduler.load_state_dict(state)

    if args.thinnify:   # needs no data: the example input comes from the dataset's shape
        run_dir = make_run_dir(args)
        setup_logging(args.verbose, os.path.join(run_dir, "run.log"))
        thinnify(args, model, optimizer, scheduler, resumed, args.resume_from or args.exp_load_weights_from,
                 run_dir, model_dataset)
        return 0

    world = env.world_size if distributed else 1
    train_loader, valid_loader, test_loader = load_data(
        dataset, args.data, args.batch_size // world, workers=args.workers,
        validation_split=0.0 if args.evaluate else args.validation_split,
        effective_train_size=args.effective_train_size, effective_valid_size=args.effective_valid_size,
        effective_test_size=args.effective_test_size, seed=seed, deterministic=args.deterministic,
        num_replicas=world, rank=env.rank if distributed else 0)
    check_num_classes(train_loader, models.num_classes(model_dataset), args.arch, args.data)

    main_rank = not distributed or env.is_main
    run_dir = make_run_dir(args) if main_rank else None
    setup_logging(args.verbose, os.path.join(run_dir, "run.log") if run_dir else None, quiet=not main_rank)
    if run_dir:
        log.info("Log file for this run: %s", os.path.join(run_dir, "run.log"))
        log.info("Command: %s", " ".join(sys.argv))
        if args.compress:
            shutil.copy(args.compress, os.path.join(run_dir, os.path.basename(args.compress)))
    log.info("Random seed: %d%s", seed, " (deterministic)" if args.deterministic else "")
    if distributed:
        log.info("Distributed: %d processes (%s), %d samples per process and minibatch",
                 world, env.backend, args.batch_size // world)
    log.info("Dataset %s: %d training, %d validation, %d test samples", dataset,
             train_loader.dataset_size * world, (valid_loader.dataset_size if valid_loader else 0) * world,
             test_loader.dataset_size * world)
    if resumed is not None:
        log.info("Loaded %s (epoch %s)", args.resume_from or args.exp_load_weights_from, resumed.get("epoch"))

    if args.sense:
        sensitivity(args, model, valid_loader or test_loader, nn.CrossEntropyLoss(), device, run_dir)
        return 0
    if args.scratch == "B":
        args.epochs = scratch_epochs(args, model, model_dataset)

    if args.compile and distributed:
        raise UsageError("--compile is not supported under torchrun yet; drop one of them")
    train_model = ElasticDDP(model) if distributed else model
    if args.compile:
        train_model = torch.compile(train_model)
    loop = Loop(args=args, model=model, train_model=train_model, optimizer=optimizer,
                scheduler=scheduler, train_loader=train_loader, valid_loader=valid_loader,
                test_loader=test_loader, criterion=nn.CrossEntropyLoss(), device=device,
                dataset=dataset, seed=seed, run_dir=run_dir, best=best, metrics_rows=rows,
                distributed=distributed)
    num_classes = getattr(test_loader, "num_classes", None)
    if args.evaluate:
        loop.test(num_classes)
        return 0
    code = loop.run(start_epoch, skip)
    if code == 0:
        loop.test(num_classes)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()

    def one_line_error(message):   # argparse prints usage + error; we print one line
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        sys.exit(2)

    parser.error = one_line_error
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CompressorError as e:
        sys.stderr.write(f"{parser.prog}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{parser.prog}: interrupted; the last complete epoch's checkpoint is in "
                         f"the run folder\n")
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
