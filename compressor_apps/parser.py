"""The command line of compress_classifier, grouped, with Distiller's flag names."""
from __future__ import annotations

import argparse

from .deploy import add_deploy_args
from .kd import add_distillation_args
from .quantize import add_quantization_args

SUMMARIES = ("sparsity", "compute", "model", "modules", "thinning")
PHASES = ("train", "valid", "test")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Appends '(default: X)' when there is a meaningful default not already described."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        meaningful = default is not None and default is not False and default != [] \
            and default is not argparse.SUPPRESS
        if meaningful and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compress_classifier",
        description="Train, compress (prune, regularize, thin) and evaluate an image classifier "
                    "under a YAML compression schedule.",
        epilog="example:\n  python apps/compress_classifier.py --arch simplenet_mnist --dataset digits "
               "--epochs 8 --compress schedules/agp/simplenet_mnist.yaml\n"
               "docs: docs/app.md",
        formatter_class=_Formatter)
    p.add_argument("data", metavar="DATA_DIR", nargs="?",
                   help="dataset folder (MNIST IDX files, CIFAR-10 python batches or ImageNet-style "
                        "train/ and val/ class folders); not needed for --dataset digits")

    g = p.add_argument_group("model and data")
    g.add_argument("--arch", "-a", default="simplenet_mnist", type=str.lower, metavar="ARCH",
                   help="architecture (see docs/architectures.md)")
    g.add_argument("--pretrained", action="store_true",
                   help="start from torchvision's pretrained weights (ImageNet models; needs torchvision)")
    g.add_argument("--dataset", default=None,
                   help="mnist, cifar10, imagenet or digits; inferred from --arch when not given "
                        "(*_cifar: cifar10, *_mnist, lenet*: mnist, others: imagenet)")
    g.add_argument("--workers", "-j", type=int, default=0, metavar="N",
                   help="data-loading worker processes (image folders only)")
    g.add_argument("--batch-size", "-b", type=int, default=256, metavar="N", help="minibatch size")
    g.add_argument("--validation-split", "--valid-size", "--vs", dest="validation_split", type=float,
                   default=0.1, metavar="FRAC", help="fraction of the training set held out for validation")
    g.add_argument("--effective-train-size", "--etrs", type=float, default=1.0, metavar="FRAC",
                   help="fraction of the training set used each epoch (resampled every epoch)")
    g.add_argument("--effective-valid-size", "--evs", type=float, default=1.0, metavar="FRAC",
                   help="fraction of the validation set used (a fixed subset)")
    g.add_argument("--effective-test-size", "--etes", type=float, default=1.0, metavar="FRAC",
                   help="fraction of the test set used (a fixed subset)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=10, metavar="N",
                   help="the final epoch number (absolute, as in Distiller): a run resumed at epoch "
                        "12 with --epochs 20 trains 8 more")
    g.add_argument("--lr", "--learning-rate", type=float, default=0.1, dest="lr",
                   help="initial learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", "--wd", type=float, default=1e-4, dest="weight_decay",
                   help="L2 weight decay")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd",
                   help="Distiller always used SGD")
    g.add_argument("--compile", action="store_true",
                   help="train through torch.compile (recompiles by itself after thinning; the "
                        "first steps pay the compilation time)")
    g.add_argument("--print-freq", "-p", type=int, default=20, metavar="N",
                   help="progress line every N minibatches when not on a terminal")
    g.add_argument("--seed", type=int, default=None,
                   help="random seed; random when not given, or 0 with --deterministic")
    g.add_argument("--deterministic", "--det", action="store_true",
                   help="deterministic algorithms and data order: a resumed run then equals an "
                        "uninterrupted one bit for bit")

    g = p.add_argument_group("compression")
    g.add_argument("--compress", metavar="YAML", help="compression schedule (docs/schedule.md)")
    g.add_argument("--masks-sparsity", action="store_true",
                   help="print the sparsity of every mask after each epoch")
    g.add_argument("--best-by", choices=("top1", "sparsity"), default="top1",
                   help="rank the best epoch by top-1 (then top-5), or like Distiller by fewest "
                        "non-zero parameters first, then top-1")
    g.add_argument("--num-best-scores", type=int, default=1, metavar="N",
                   help="how many best epochs to report")

    g = p.add_argument_group("checkpoints and resuming")
    g.add_argument("--resume-from", metavar="PATH",
                   help="continue a run from its checkpoint: weights, optimizer, schedule state, epoch")
    g.add_argument("--resume", dest="deprecated_resume", metavar="PATH", default=None,
                   help=argparse.SUPPRESS)   # Distiller's deprecated flag; see common.check_args
    g.add_argument("--exp-load-weights-from", metavar="PATH",
                   help="start from a checkpoint's weights only (new optimizer, epoch 0)")
    g.add_argument("--reset-optimizer", action="store_true",
                   help="with --resume-from: new optimizer and start at epoch 0 (to prune a "
                        "trained model)")

    g = p.add_argument_group("modes (each runs instead of training, then exits)")
    g.add_argument("--summary", action="append", choices=SUMMARIES,
                   help="print a summary of the model (of the checkpoint's, with --resume-from or "
                        "--exp-load-weights-from) and exit; repeatable")
    g.add_argument("--evaluate", "-e", action="store_true",
                   help="evaluate on the test set and exit (use with --resume-from or "
                        "--exp-load-weights-from)")
    g.add_argument("--export-onnx", nargs="?", const="model.onnx", default=None, metavar="FILE",
                   help="export the model to ONNX and exit (needs the onnx extra)")
    g.add_argument("--thinnify", action="store_true",
                   help="remove the zeroed filters and channels of the --resume-from / "
                        "--exp-load-weights-from checkpoint and save it as "
                        "<stem>_thinned_checkpoint.pth.tar in the run folder, with the compute "
                        "table before and after")
    g.add_argument("--sense", choices=("element", "filter", "channel"), default=None,
                   help="sensitivity analysis: prune each layer alone at each level of "
                        "--sense-range, evaluate on the validation set, restore; writes "
                        "sensitivity.csv, sensitivity.png (with the plot extra) and "
                        "sensitivity_schedule.yaml")
    g.add_argument("--sense-range", nargs=3, type=float, default=[0.0, 0.95, 0.05],
                   metavar=("START", "STOP", "STEP"), help="sparsity levels (stop exclusive)")
    g.add_argument("--sense-max-drop", type=float, default=1.0, metavar="POINTS",
                   help="top-1 points a layer may lose in the suggested schedule")

    g = p.add_argument_group("scratch baselines (Liu et al., Rethinking the Value of Network Pruning)")
    g.add_argument("--scratch", choices=("E", "B"), default=None,
                   help="train the architecture of the --exp-load-weights-from checkpoint (e.g. a "
                        "thinned one) from random initialization: E for --epochs epochs, B for the "
                        "same compute budget (epochs scaled by dense MACs / its MACs)")
    g.add_argument("--scratch-dense-arch", default=None, metavar="ARCH",
                   help="for --scratch B: the dense architecture (default: --arch)")

    g = p.add_argument_group("reports")
    g.add_argument("--confusion", action="store_true", help="print the confusion matrix when evaluating")
    g.add_argument("--activation-stats", "--act-stats", nargs="+", choices=PHASES, default=[],
                   metavar="PHASE", help="collect activation sparsity of ReLU outputs in these "
                   "phases (train, valid, test) and print the table")

    g = p.add_argument_group("output and devices")
    g.add_argument("--out-dir", "-o", default="logs", help="where run folders are created")
    g.add_argument("--name", "-n", default=None, help="run name; the folder is NAME___TIMESTAMP")
    g.add_argument("--cpu", action="store_true", help="use the CPU even if a GPU is present")
    g.add_argument("--gpus", default=None, metavar="IDS",
                   help="GPU index to use, e.g. 0 (one process uses one device; use torchrun "
                        "for several)")
    g.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    g.add_argument("--no-progress-bar", action="store_true",
                   help="print progress lines even on a terminal")
    add_distillation_args(p)
    add_deploy_args(p)
    add_quantization_args(p)
    return p
