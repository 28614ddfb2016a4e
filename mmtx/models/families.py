"""Imports every model family so that its factories are registered."""

# Each import registers that family's models; add new families here.
from . import cnn, hybrid, vit  # noqa: F401  vision: ViT, CNN baselines, CCT
from . import rnn, text  # noqa: F401  text: GPT/BERT/seq2seq on the shared layers, LSTM baseline
