#!/usr/bin/env python3
"""Prune a Hugging Face causal language model under a schedule; see `--help` and
docs/methods/oneshot-llm.md. Installed as the `compress-lm` command (`pip install -e ".[hf]"`)."""
import sys

from compressor_apps.compress_lm import main

if __name__ == "__main__":
    sys.exit(main())
