"""Measures that judge models from their outputs: retrieval R@k, zero-shot and foil accuracy,
the pointing game.

mmtx.eval is used by training and experiments and imports neither (mmtx.train,
mmtx.experiments); it works on tensors a model has already produced.
"""

from .grounding import patch_coverage, pointing_game
from .retrieval import (
    class_embeddings,
    foil_accuracy,
    retrieval_ranks,
    retrieval_recall,
    zero_shot_accuracy,
    zero_shot_logits,
)

__all__ = ["retrieval_recall", "retrieval_ranks", "zero_shot_accuracy", "zero_shot_logits",
           "class_embeddings", "foil_accuracy", "pointing_game", "patch_coverage"]
