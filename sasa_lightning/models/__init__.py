"""Model definitions, the registry and analytic complexity."""

from .complexity import Complexity, complexity
from .registry import create_model, list_models, register_model
from .resnet import ResNet, ResNetConfig
from .retinanet import RetinaNetConfig
from .timm_models import register_with_timm

register_with_timm()

__all__ = ["Complexity", "ResNet", "ResNetConfig", "RetinaNetConfig", "complexity", "create_model", "list_models",
           "register_model"]
