#!/usr/bin/env python3
"""Train, compress and evaluate an image classifier; see `--help` and docs/app.md.

The same program is installed as the `compress-classifier` command; its code is the
`compressor_apps` package (install the project first: `pip install -e .`).
"""
import sys

from compressor_apps.compress_classifier import main

if __name__ == "__main__":
    sys.exit(main())
