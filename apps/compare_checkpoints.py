#!/usr/bin/env python3
"""Compare compressed checkpoints with a reference: test top-1, agreement, weights and MACs kept.

The same program is installed as the `compare-checkpoints` command; its code is the
`compressor_apps` package (install the project first: `pip install -e .`).
"""
import sys

from compressor_apps.compare import main

if __name__ == "__main__":
    sys.exit(main())
