"""Latent diffusion: images to latents and back through a diffusers `AutoencoderKL`.

A generator then trains and samples in the autoencoder's latent space (Stable Diffusion's VAE
with the published DiT-XL/2 at 256 px: 4 x 32 x 32 latents), and only the decoded samples are
images. Latents are scaled by the autoencoder's `scaling_factor`, so they have about unit
variance, as the objectives assume. diffusers is needed only here (the dev extra has it).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


def load_vae(path) -> nn.Module:
    """A diffusers AutoencoderKL from a local folder (`save_pretrained` / hub snapshot layout),
    frozen, in eval mode. Nothing is downloaded."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"vae: {str(path)!r} is not an AutoencoderKL folder (no "
                                f"config.json); give the folder save_pretrained wrote")
    if not any(path.glob("diffusion_pytorch_model*")):
        raise FileNotFoundError(f"vae: {str(path)!r} has a config.json but no weights "
                                f"(diffusion_pytorch_model.safetensors or .bin); give the "
                                f"folder save_pretrained wrote")
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ImportError("vae: latent generation needs diffusers (pip install diffusers)") from e
    try:
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # a damaged weights file or config: diffusers' errors are many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"vae: {str(path)!r} does not load as an AutoencoderKL ({first})") \
            from None
    return vae.eval().requires_grad_(False)


class Latents:
    """encode: images (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f); decode: back.
    `shape(image_shape)` gives the latent shape the generator is built for."""

    def __init__(self, vae: nn.Module):
        self.vae = vae
        cfg = vae.config
        self.channels = int(cfg.latent_channels)
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)  # one halving per down block
        self.scale = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)

    def shape(self, image_shape) -> tuple[int, int, int]:
        _, h, w = image_shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"vae: image size {h}x{w} is not divisible by the autoencoder's "
                             f"downsampling factor {self.factor}")
        return self.channels, h // self.factor, w // self.factor

    def _to(self, x: torch.Tensor) -> None:
        p = next(self.vae.parameters())
        if p.device != x.device:
            self.vae.to(x.device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Training draws from the posterior (as latent-diffusion training does); evaluation
        (sample=False) takes its mean, so its losses compare across steps."""
        self._to(images)
        dist = self.vae.encode(images.float()).latent_dist
        return (dist.sample() if sample else dist.mean) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._to(latents)
        return self.vae.decode(latents.float() / self.scale).sample.clamp(-1, 1)
