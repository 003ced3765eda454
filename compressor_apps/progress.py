"""Progress display: an in-place bar on a terminal, periodic log lines otherwise."""
from __future__ import annotations

import logging
import sys
from typing import Dict

log = logging.getLogger("compressor.app")


def format_stats(stats: Dict[str, float]) -> str:
    parts = []
    for name, value in stats.items():
        if name == "LR":
            parts.append(f"{name} {value:.6g}")
        elif name == "Time":
            parts.append(f"{name} {value:.3f}s/step")
        else:
            parts.append(f"{name} {value:.4f}")
    return "    ".join(parts)


class Progress:
    """Callable given to the training loop: ``progress(step, steps, stats)``."""

    def __init__(self, label: str, bar: bool, stream=sys.stderr, width: int = 24):
        self.label, self.bar, self.stream, self.width = label, bar, stream, width

    def __call__(self, step: int, steps: int, stats: Dict[str, float]) -> None:
        if self.bar:
            filled = int(self.width * step / max(steps, 1))
            line = f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {step}/{steps}  " \
                   f"{format_stats({k: v for k, v in stats.items() if k in ('Overall Loss', 'Loss', 'Top1')})}"
            self.stream.write(line)
            if step == steps:
                self.stream.write("\r" + " " * (len(line) + 2) + "\r")
            self.stream.flush()
        else:
            log.info("%s[%5d/%5d]    %s", self.label, step, steps, format_stats(stats))


def use_bar(disabled: bool) -> bool:
    return not disabled and sys.stderr.isatty()
