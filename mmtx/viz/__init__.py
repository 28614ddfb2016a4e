"""Attention visualisation: rollout maps and overlays (matplotlib, PNG)."""

from .rollout import attention_rollout, plot_rollout, rollout_maps

__all__ = ["attention_rollout", "rollout_maps", "plot_rollout"]
