"""Training and evaluation of video world models: V-JEPA, video diffusion and RSSM."""

__version__ = "0.1.0"
