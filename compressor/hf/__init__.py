"""Hugging Face transformers: saving a thinned model so it loads again (``save_thinned``,
``load_thinned``). Capture, MLP neurons and attention heads live in the graph and thinning layers
(``compressor.graph.blocks``, ``compressor.graph.attention``, ``compressor.thinning.heads``); this
package imports transformers only when loading. See docs/reach-transformers.md."""
from .save import HFSaveError, SavedModel, layer_widths, load_thinned, save_thinned

__all__ = ["HFSaveError", "layer_widths", "load_thinned", "SavedModel", "save_thinned"]
