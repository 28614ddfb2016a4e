"""Measures that judge models from their outputs: retrieval R@k, zero-shot and foil accuracy,
the pointing game; for generated images, Frechet distance on our own features (fd_shapes) and
conditional accuracy read by an independent judge trained on real shapes images.

mmtx.eval is used by training and experiments and imports neither (mmtx.train,
mmtx.experiments); it works on tensors a model has already produced.
"""

from .generation import conditional_accuracy, frechet_distance, frechet_report, real_floor
from .grounding import patch_coverage, pointing_game
from .judge import Judge, judge_data_config, load_judge
from .retrieval import (
    class_embeddings,
    foil_accuracy,
    retrieval_ranks,
    retrieval_recall,
    zero_shot_accuracy,
    zero_shot_logits,
)

__all__ = ["retrieval_recall", "retrieval_ranks", "zero_shot_accuracy", "zero_shot_logits",
           "class_embeddings", "foil_accuracy", "pointing_game", "patch_coverage",
           "frechet_distance", "frechet_report", "real_floor", "conditional_accuracy", "Judge",
           "load_judge", "judge_data_config"]
