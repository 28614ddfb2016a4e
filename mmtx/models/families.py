"""Imports every model family so that its factories are registered."""

# Each import registers that family's models; add new families here.
# vision: ViT, CNN baselines, CCT; text: GPT/BERT/seq2seq on the shared layers, LSTM baseline
from . import cnn, hybrid, rnn, text, vit  # noqa: F401
