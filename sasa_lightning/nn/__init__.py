"""Local self-attention: the operator (`functional`), its backends and the modules that hold parameters."""

from .attention import LocalSelfAttention2d
from .functional import local_attention, local_self_attention
from .stem import AttentionStem

__all__ = ["AttentionStem", "LocalSelfAttention2d", "local_attention", "local_self_attention"]
