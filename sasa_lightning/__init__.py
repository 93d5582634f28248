"""Stand-alone self-attention vision models (Ramachandran et al., NeurIPS 2019) with Lightning."""

__version__ = "0.1.0"
