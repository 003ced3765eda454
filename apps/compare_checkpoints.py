#!/usr/bin/env python3
"""Compare compressed checkpoints with a reference: test top-1, agreement, weights and MACs kept."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from compressor.cli.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
