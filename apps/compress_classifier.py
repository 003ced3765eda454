#!/usr/bin/env python3
"""Train, compress and evaluate an image classifier; see `--help` and docs/app.md.

The same program is installed as the `compress-classifier` command.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from compressor.cli.compress_classifier import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
