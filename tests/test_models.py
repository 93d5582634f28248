"""Models, registry and complexity."""

import pytest
import torch

from sasa_lightning.models import complexity, create_model, list_models
from sasa_lightning.nn import AttentionStem, LocalSelfAttention2d


def test_registry_lists_the_paper_models():
    assert {"resnet26", "resnet38", "resnet50", "sasa_resnet26", "sasa_resnet38", "sasa_resnet50"} <= set(list_models())


def test_resnet50_sizes_match_the_paper():
    """25.6M params / 8.2 GFLOPs (conv) and 18.0M / 7.0 (SASA), within 1.5 % and 3 %."""
    conv, sasa = complexity(create_model("resnet50")), complexity(create_model("sasa_resnet50"))
    assert conv.params == 25_557_032  # torchvision's resnet50
    assert abs(conv.params_m / 25.6 - 1) < 0.015 and abs(conv.gflops / 8.2 - 1) < 0.03
    assert abs(sasa.params_m / 18.0 - 1) < 0.015 and abs(sasa.gflops / 7.0 - 1) < 0.03


def test_overrides_select_the_layers():
    model = create_model("sasa_resnet26", stem="attention", attention_stages=(3, 4), kernel_size=5, num_classes=10)
    assert isinstance(model.stem, AttentionStem)
    attention = [m for m in model.modules() if isinstance(m, LocalSelfAttention2d)]
    assert len(attention) == 4 + 1  # blocks of stages 3 and 4 of ResNet-26
    assert all(m.kernel_size == 5 for m in attention)
    assert not any(isinstance(m, LocalSelfAttention2d) for m in model.stages[:2].modules())
    assert model.fc.out_features == 10


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("resnet51", {}, "unknown model 'resnet51'; available: "),
        ("sasa_resnet50", {"kernel": 7}, r"unknown option\(s\) \['kernel'\]"),
        ("sasa_resnet50", {"stem": "patchify"}, "stem must be one of"),
        ("sasa_resnet50", {"attention_stages": (0, 5)}, "stage numbers 1-4"),
    ],
)
def test_bad_model_options_are_rejected(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **overrides)


@pytest.mark.parametrize("stem", ["conv", "attention"])
def test_sasa_model_trains(stem):
    torch.manual_seed(0)
    model = create_model("sasa_resnet26", stem=stem, num_classes=4)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_attention_resnet_takes_odd_feature_map_sizes():
    """72x72 gives 9, 5 and 3 pixel stages: the strided attention must round up as the strided shortcut does."""
    model = create_model("sasa_resnet26", kernel_size=3, num_classes=4).eval()
    with torch.no_grad():
        features = model.forward_stages(torch.rand(1, 3, 72, 72))
    assert [f.shape[-1] for f in features] == [18, 9, 5, 3]


def test_every_model_name_is_a_documented_function_of_that_name_in_the_registry():
    """A grep for a model's name finds its definition: `def <name>(**overrides)` with a docstring."""
    import inspect

    from sasa_lightning.models import registry

    source = inspect.getsource(registry)
    for name in list_models():
        builder = getattr(registry, name)
        assert f"\ndef {name}(**overrides: Any)" in source and inspect.getdoc(builder), name


def test_a_detectors_depth_is_in_its_name():
    from sasa_lightning.errors import ConfigError

    small = dict(num_classes=3, base_width=16, channels=32, kernel_size=3)
    assert [len(stage) for stage in create_model("retinanet_sasa_resnet26", **small).backbone.body.stages] == [1, 2, 4, 1]
    assert [len(stage) for stage in create_model("retinanet_sasa_resnet50", **small).backbone.body.stages] == [3, 4, 6, 3]
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['depth'\]"):
        create_model("retinanet_sasa_resnet50", depth=26)
