"""Drive a ``CompressionScheduler`` from the trainers people already use.

``compressor.integrations.hf`` holds the Hugging Face ``Trainer`` callback and trainer subclass,
``compressor.integrations.lightning`` the Lightning callback and module mixin. Both are optional:
importing this package imports neither transformers nor lightning.
"""
