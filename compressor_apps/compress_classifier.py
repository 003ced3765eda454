"""compress_classifier: train, compress and evaluate an image classifier from the command line.

User mistakes (unknown arch, missing data, a schedule error, an incompatible checkpoint) end with
one line on stderr and exit code 2; nothing already written is damaged (checkpoints and CSVs are
written atomically). Under ``torchrun`` it trains with DistributedDataParallel; rank 0 alone logs
and writes files.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn

from compressor import checkpoint as ckpt_io
from compressor import file_config, models
from compressor.data import check_num_classes, load_data
from compressor.distributed import ElasticDDP, init_from_env, wait_for_peers_to_fail
from compressor.errors import CompressorError, OptimizerMismatchError
from compressor.scheduler import CompressionScheduler
from .best import BestScores
from .deploy import DeployConfig, export_at_end
from .quantize import QEConfig, quantize_and_evaluate
from .common import (choose_seed, make_optimizer, make_run_dir, pick_device, reports_error,
                     seed_everything, setup_logging)
from .epochs import Loop
from .kd import KDConfig, add_distillation_policy, build_distillation_policy
from .modes import export_onnx, reinitialize, run_summaries, scratch_epochs, sensitivity, thinnify
from .parser import build_parser
from .resume import resume_point
from .run_config import RunConfig, UsageError

log = logging.getLogger("compressor.app")


def shared_seed(config: RunConfig, distributed: bool) -> int:
    """The run's seed; under torchrun rank 0 chooses and every rank uses it."""
    seed = choose_seed(config)
    if distributed:
        t = torch.tensor([seed], dtype=torch.long)
        dist.broadcast(t, src=0)
        seed = int(t.item())
    return seed


def run(config: RunConfig, kd: Optional[KDConfig] = None,
        deploy: Optional[DeployConfig] = None, qe: Optional[QEConfig] = None) -> int:
    """Run the mode ``config`` asks for (or train); returns the exit code."""
    if deploy is not None and deploy.enabled:
        deploy.check_mode(config)
    env = init_from_env(config.cpu)
    distributed = env is not None
    if config.compile and distributed:   # refused before any file (run.log) is written
        raise UsageError("--compile is not supported under torchrun yet; drop one of them")
    device = env.device if distributed else pick_device(config)
    if distributed and config.batch_size % env.world_size:
        raise UsageError(f"--batch-size {config.batch_size} must divide evenly among "
                         f"{env.world_size} processes (it is the global batch)")
    seed = shared_seed(config, distributed)
    seed_everything(seed, config.deterministic)
    dataset, model_dataset, source = config.dataset_name, config.model_dataset, config.checkpoint
    model = models.create_model(config.arch, model_dataset, pretrained=config.pretrained).to(device)

    if config.summary:
        setup_logging(config.verbose)
        if source:   # summarize that checkpoint's network
            ckpt_io.restore(ckpt_io.read_checkpoint(source), model, arch=config.arch, path=source)
        run_summaries(config, model, model_dataset)
        return 0
    if config.export_onnx:
        setup_logging(config.verbose)
        export_onnx(config, model, model_dataset)
        return 0

    # Load everything the user named before anything is written to disk.
    start_epoch, skip, meters, resumed, best, rows = 0, 0, None, None, BestScores(config.best_by), []
    optimizer = make_optimizer(config, model)
    scheduler: Optional[CompressionScheduler] = None
    full = config.full_resume
    if source:
        resumed = ckpt_io.read_checkpoint(source)
        if resumed.get("compression_sched") is not None:
            scheduler = CompressionScheduler(model)
        try:
            ckpt_io.restore(resumed, model, optimizer if full else None, scheduler, arch=config.arch,
                            path=source)
        except OptimizerMismatchError as e:   # the library names no flag; the app does
            raise UsageError(f"{e.path}: optimizer state is for {e.saved}, not {e.given}; use "
                             f"--reset-optimizer to start a new one") from None
        if config.scratch:   # the checkpoint only lends its (thinned) architecture
            reinitialize(model)
            scheduler = None
        if not full:   # weights only: the parameters may have been thinned, so a new optimizer
            optimizer = make_optimizer(config, model)
        else:
            extras = resumed.get("extras", {})
            point = resume_point(resumed, config, source)   # refuses another batch size mid-epoch
            start_epoch, skip, meters = point.epoch, point.minibatch, point.meters
            best, rows = BestScores(config.best_by, extras.get("history", [])), list(extras.get("metrics", []))
            if config.seed is None and "seed" in extras:
                seed = int(extras["seed"])
            if "rng_state" in extras:
                torch.set_rng_state(extras["rng_state"])
    if config.compress:
        state = None   # a resumed run gets every policy's state back (gates, cached thresholds ...)
        if scheduler is not None:
            state = resumed["compression_sched"] if full else scheduler.state_dict()
        scheduler = file_config(model, optimizer, config.compress,
                                resumed_epoch=start_epoch - 1 if start_epoch > 0 else None)
        if state is not None:
            scheduler.load_state_dict(state)

    if config.thinnify:   # needs no data: the example input comes from the dataset's shape
        run_dir = make_run_dir(config)
        setup_logging(config.verbose, os.path.join(run_dir, "run.log"))
        thinnify(config, model, optimizer, scheduler, resumed, source, run_dir, model_dataset)
        return 0

    kd_policy = None   # the teacher is loaded and checked before anything is written
    if kd is not None and kd.enabled and not config.evaluate and not config.sense:
        kd_policy = build_distillation_policy(kd, model, model_dataset, device)
    world = env.world_size if distributed else 1
    train_loader, valid_loader, test_loader = load_data(
        dataset, config.data, config.batch_size // world, workers=config.workers,
        validation_split=0.0 if config.evaluate else config.validation_split,
        effective_train_size=config.effective_train_size,
        effective_valid_size=config.effective_valid_size,
        effective_test_size=config.effective_test_size, seed=seed, deterministic=config.deterministic,
        num_replicas=world, rank=env.rank if distributed else 0)
    check_num_classes(train_loader, models.num_classes(model_dataset), config.arch, config.data)

    main_rank = not distributed or env.is_main
    run_dir = make_run_dir(config) if main_rank else None
    setup_logging(config.verbose, os.path.join(run_dir, "run.log") if run_dir else None, quiet=not main_rank)
    if run_dir:
        log.info("Log file for this run: %s", os.path.join(run_dir, "run.log"))
        log.info("Command: %s", " ".join(sys.argv))
        if config.compress:
            shutil.copy(config.compress, os.path.join(run_dir, os.path.basename(config.compress)))
    log.info("Random seed: %d%s", seed, " (deterministic)" if config.deterministic else "")
    if distributed:
        log.info("Distributed: %d processes (%s), %d samples per process and minibatch",
                 world, env.backend, config.batch_size // world)
    log.info("Dataset %s: %d training, %d validation, %d test samples", dataset,
             train_loader.dataset_size * world, (valid_loader.dataset_size if valid_loader else 0) * world,
             test_loader.dataset_size * world)
    if resumed is not None:
        log.info("Loaded %s (epoch %s)", source, resumed.get("epoch"))

    if config.sense:
        sensitivity(config, model, valid_loader or test_loader, nn.CrossEntropyLoss(), device, run_dir)
        return 0
    # The final epoch: --epochs, or for a scratch-B baseline the same compute as the dense run.
    epochs = scratch_epochs(config, model, model_dataset) if config.scratch == "B" else config.epochs

    if kd_policy is not None:   # appended after the schedule's policies, as in Distiller
        scheduler = add_distillation_policy(kd, kd_policy, scheduler, model, epochs)
    train_model = ElasticDDP(model) if distributed else model
    if config.compile:
        train_model = torch.compile(train_model)
    loop = Loop(config=config, epochs=epochs, model=model, train_model=train_model,
                optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
                valid_loader=valid_loader, test_loader=test_loader,
                criterion=nn.CrossEntropyLoss(), device=device, dataset=dataset, seed=seed,
                run_dir=run_dir, best=best, metrics_rows=rows, distributed=distributed)
    num_classes = getattr(test_loader, "num_classes", None)
    if config.evaluate:
        loop.test(num_classes)
    else:
        code = loop.run(start_epoch, skip, meters)
        if code != 0:
            return code
        loop.test(num_classes)
    if qe is not None and qe.enabled and main_rank:
        quantize_and_evaluate(qe, model, scheduler, train_loader, test_loader, device, run_dir)
    if deploy is not None and deploy.enabled and main_rank:
        export_at_end(deploy, model, train_loader, model_dataset, run_dir)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()

    def one_line_error(message):   # argparse prints usage + error; we print one line
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
        sys.exit(2)

    parser.error = one_line_error
    args = parser.parse_args(argv)
    try:
        return run(RunConfig.from_args(args), KDConfig.from_args(args), DeployConfig.from_args(args),
                   QEConfig.from_args(args))
    except CompressorError as e:
        if reports_error(e):   # under torchrun, rank 0 alone for what every rank finds
            sys.stderr.write(f"{parser.prog}: error: {e}\n")
        if not getattr(e, "rank_local", False):
            wait_for_peers_to_fail()   # so every rank exits 2 rather than torchrun stopping it
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
