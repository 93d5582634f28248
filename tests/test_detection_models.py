"""RetinaNet detectors of Table 2: assembly, forward/backward, sizes."""

import pytest
import torch
from torchvision.models.detection import RetinaNet

from sasa_lightning.models import complexity, create_model
from sasa_lightning.models.paper import PAPER_TABLES
from sasa_lightning.models.resnet import Bottleneck
from sasa_lightning.nn import AttentionStem, LocalSelfAttention2d

TABLE2 = PAPER_TABLES[2]


def tiny(row):
    return create_model(row.model, **row.overrides, num_classes=3, min_size=64, max_size=64)


@pytest.mark.parametrize("row", TABLE2, ids=lambda r: r.row)
def test_every_table2_detector_trains_and_detects_on_cpu(row):
    torch.manual_seed(0)
    model = tiny(row)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 20.0, 20.0], [30.0, 5.0, 60.0, 40.0]]), "labels": torch.tensor([0, 2])}]
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    # Every attention layer of the FPN and heads learns (the backbone's residual branches start at
    # zero, by their last batch norm, so there the gradient reaches those norms first).
    attention = [m for m in [*model.backbone.fpn.modules(), *model.head.modules()] if isinstance(m, LocalSelfAttention2d)]
    assert len(attention) == (5 + 8 if row.overrides.get("heads") == "attention" else 0)
    assert all(m.query.grad is not None and m.query.grad.abs().sum() > 0 for m in attention)
    blocks = [m for m in model.backbone.body.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(b.bn3.weight.grad.abs().sum() > 0 for b in blocks)

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}


def test_attention_variants_replace_every_3x3_conv_of_fpn_and_heads():
    model = create_model("retinanet_sasa_resnet50", stem="attention", fpn="attention", heads="attention")
    assert isinstance(model, RetinaNet) and isinstance(model.backbone.body.stem, AttentionStem)
    fpn = model.backbone.fpn
    assert all(isinstance(block, LocalSelfAttention2d) for block in fpn.layer_blocks)
    assert fpn.extra_blocks.p6.stride == 2 and fpn.extra_blocks.p7.stride == 2  # attend, then 2x2 average pool
    for tower in (model.head.classification_head.conv, model.head.regression_head.conv):
        layers = [m for m in tower if isinstance(m, LocalSelfAttention2d)]
        assert len(layers) == 4 and all((m.out_channels, m.kernel_size, m.heads) == (256, 7, 8) for m in layers)
        assert all(abs(m.value.std().item() - 0.01) < 0.001 for m in layers)  # W_V from N(0, 0.01)
        assert isinstance(tower[-2], torch.nn.Conv2d) and tower[-2].kernel_size == (1, 1)  # mixes the heads
    convs_3x3 = [m for m in [*fpn.modules(), *model.head.modules()] if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs_3x3) == 2  # only the class and box predictors, whose outputs are not 256 channels


def test_conv_retinanet_matches_torchvision_resnet50_fpn_size():
    """Our conv RetinaNet is torchvision's retinanet_resnet50_fpn in structure: the same parameter count."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    ours = create_model("retinanet_resnet50", num_classes=91)
    theirs = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(ours) == count(theirs)


def test_detector_complexity_counts_the_network_at_640():
    measured = complexity(create_model("retinanet_resnet50"), (3, 640, 640))
    assert abs(measured.params_m / 33.4 - 1) < 0.02 and abs(measured.gflops / 182 - 1) < 0.05


@pytest.mark.parametrize("overrides, message", [({"fpn": "transformer"}, "fpn must be one of"),
                                                ({"heads": "mlp"}, "heads must be one of")])
def test_bad_detector_options_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model("retinanet_sasa_resnet50", **overrides)
