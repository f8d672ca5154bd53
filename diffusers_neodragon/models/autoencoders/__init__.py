"""The causal video VAEs: one shared encoder, a full causal decoder (the teacher) and a tiny streaming one."""

from .autoencoder_asymmetric import AsymmetricVAE
from .autoencoder_causal_video import CausalVideoVAE


__all__ = ["AsymmetricVAE", "CausalVideoVAE"]
