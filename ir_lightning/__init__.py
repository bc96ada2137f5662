"""ir-lightning: a PyTorch Lightning training suite for diffusion-based image restoration."""

__version__ = "0.1.0"
