"""The classifiers as timm models: built by timm.create_model, configured by timm's own
resolve_data_config, taken apart by its feature extractors, and trained through the calls timm's
train script makes."""

import pytest
import timm
import torch

import sasa_lightning.models  # noqa: F401  (registers the models with timm)
from sasa_lightning.data.image_module import IMAGENET_MEAN, IMAGENET_STD
from sasa_lightning.errors import ConfigError
from sasa_lightning.models import create_model
from sasa_lightning.models.timm_models import TIMM_NAMES


def test_every_classifier_is_a_timm_model():
    assert sorted(timm.list_models("sasa_resnet*") + timm.list_models("paper_resnet*")) == sorted(TIMM_NAMES.values())


@pytest.mark.parametrize("name,timm_name", TIMM_NAMES.items())
def test_timm_builds_the_registry_model_and_resolves_its_data_config(name, timm_name):
    torch.manual_seed(0)
    model = timm.create_model(timm_name, num_classes=10)
    torch.manual_seed(0)
    ours = create_model(name, num_classes=10)
    assert model.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ours.state_dict().values()))
    config = timm.data.resolve_data_config({}, model=model)
    # What our ImageNet pipeline does (data/image_module.py): 224 crops of 256, ImageNet statistics.
    assert config == {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": IMAGENET_MEAN,
                      "std": IMAGENET_STD, "crop_pct": 224 / 256, "crop_mode": "center"}
    assert model.pretrained_cfg["architecture"] == timm_name


@pytest.mark.parametrize("options", [{}, {"stem": "attention"}])
def test_features_only_gives_the_stages_outputs(options):
    extractor = timm.create_model("sasa_resnet26", features_only=True, out_indices=(1, 2, 3), kernel_size=3, **options)
    assert extractor.feature_info.channels() == [512, 1024, 2048]
    assert extractor.feature_info.reduction() == [8, 16, 32]
    features = extractor(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(2, 512, 8, 8), (2, 1024, 4, 4), (2, 2048, 2, 2)]
    assert len(timm.create_model("paper_resnet26", features_only=True)(torch.randn(1, 3, 64, 64))) == 4


def test_forward_features_and_head_compose_to_forward():
    model = timm.create_model("sasa_resnet26", num_classes=7, kernel_size=3).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(images)
        assert features.shape == (2, 2048, 2, 2)
        assert model.forward_head(features, pre_logits=True).shape == (2, 2048)
        torch.testing.assert_close(model.forward_head(features), model(images))
    model.reset_classifier(3)
    assert model(images).shape == (2, 3) and model.get_classifier().out_features == 3


@pytest.mark.parametrize("kwargs,message", [
    ({"pretrained": True}, "no pretrained weights are published for sasa_resnet26"),
    ({"in_chans": 1}, "takes 3 input channels (RGB), not in_chans=1"),
    ({"drop_rate": 0.2}, "has no dropout before its classifier"),
    ({"kernel_sise": 3}, "unknown option(s) ['kernel_sise'] for model 'sasa_resnet26'"),
])
def test_what_the_models_cannot_be_is_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        timm.create_model("sasa_resnet26", **kwargs)


@pytest.mark.slow
def test_training_steps_through_timm_as_its_train_script_does():
    """The calls of timm's train.py (which pip's timm does not ship): create_model with the
    options the script passes by default, resolve_data_config, create_transform, create_loss,
    create_optimizer_v2, create_scheduler_v2 and ModelEmaV3, on real PIL images."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    model = timm.create_model("sasa_resnet26", pretrained=False, in_chans=3, num_classes=4, drop_rate=0.0,
                              kernel_size=3, base_width=16)
    config = resolve_data_config({"input_size": (3, 64, 64)}, model=model)
    transform = create_transform(**config, is_training=True)
    images = [Image.fromarray((torch.rand(80, 96, 3) * 255).byte().numpy()) for _ in range(8)]
    batch = torch.stack([transform(image) for image in images])
    labels = torch.arange(8) % 4
    assert batch.shape == (8, 3, 64, 64)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=2, warmup_epochs=0)
    ema = ModelEmaV3(model, decay=0.9)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
        losses.append(loss.item())
    scheduler.step(1)
    assert losses[-1] < losses[0], losses
    assert not torch.equal(ema.module.fc.weight, model.fc.weight)
