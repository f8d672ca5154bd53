"""The pyramidal MMDiT denoiser."""

from .transformer_neodragon import NeodragonTransformer3DModel


__all__ = ["NeodragonTransformer3DModel"]
