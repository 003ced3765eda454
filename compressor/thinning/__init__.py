"""Thinning: physically remove zeroed filters and channels from any torch.fx-traceable network.

``graph`` follows every channel through the traced graph (torch.fx + ShapeProp) and finds which
must be removed together; ``plan`` turns zero filters / channels into a recipe of plain data;
``execute`` applies a recipe to the model, its masks and its optimizer's state (and replays saved
recipes on a dense model when a checkpoint loads); ``report`` is the dry run; ``policy`` is the
YAML extension. See docs/thinning.md.

Importing this package registers ``StructureRemover`` / ``FilterRemover`` / ``ChannelRemover`` in
``compressor.registry.EXTENSIONS``.
"""
from .api import contract_model, remove_channels, remove_filters, thin
from .execute import apply_recipe, replay
from ..graph import analyze_graph, coupled_filter_groups
from .plan import MODES, ThinningResult
from .policy import StructureRemover
from .report import ThinningReport, analyze

__all__ = [
    "analyze", "analyze_graph", "apply_recipe", "contract_model", "coupled_filter_groups", "MODES",
    "remove_channels", "remove_filters", "replay", "StructureRemover", "thin", "ThinningReport",
    "ThinningResult",
]
