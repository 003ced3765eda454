"""Thinning: physically remove zeroed filters and channels from any torch.fx-traceable network.

``graph`` follows every channel through the traced graph (torch.fx + ShapeProp) and finds which
must be removed together; ``plan`` chooses the channel classes to remove from zero filters /
channels (``bn_plan`` adds batch norms that select channels); ``build`` writes the plan as a typed
``Recipe`` (``recipe``: to and from the plain data checkpoints hold); ``execute`` applies a recipe
to the model, its masks and its optimizer's state (and replays saved recipes on a dense model when
a checkpoint loads); ``record`` remembers which recipes each model went through (``recipes_of``);
``report`` is the dry run; ``policy`` is the YAML extension. See docs/thinning.md.

Importing this package registers ``StructureRemover`` / ``FilterRemover`` / ``ChannelRemover`` in
``compressor.registry.EXTENSIONS``.
"""
from .api import contract_model, remove_channels, remove_filters, thin
from .execute import apply_recipe, replay
from ..graph import analyze_graph, coupled_filter_groups
from .build import ThinningResult
from .plan import MODES
from .recipe import Recipe, RecipeError
from .record import recipes_of
from .policy import StructureRemover
from .report import ThinningReport, analyze

__all__ = [
    "analyze", "analyze_graph", "apply_recipe", "contract_model", "coupled_filter_groups", "MODES",
    "Recipe", "RecipeError", "recipes_of", "remove_channels", "remove_filters", "replay",
    "StructureRemover", "thin", "ThinningReport", "ThinningResult",
]
