"""The fused-kernel switch: one global flag, read by the one kernel (`sdpa`) and `Attention`.

Fused kernels (PyTorch's SDPA) run unless a caller asks for the explicit math path, which is the
reference the fused path is tested against (timm keeps the same kind of global switch).
"""

from __future__ import annotations

_USE_FUSED = True


def use_fused_attn(enabled: bool = True) -> None:
    """Turn the fused SDPA kernel on or off everywhere (the math path is the reference)."""
    global _USE_FUSED
    _USE_FUSED = bool(enabled)


def fused_attn_enabled() -> bool:
    """Whether attention runs the fused kernel (see `use_fused_attn`)."""
    return _USE_FUSED
