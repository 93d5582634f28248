"""The tasks as a Lightning user takes them: a plain Trainer and their own Dataset in DataLoaders,
no data module, no FFCV, no `sasa` command."""

import lightning as L
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from sasa_lightning.errors import ConfigError
from sasa_lightning.tasks import ImageClassifier

CLASSES = 3


class Patterns(Dataset):
    """Images whose class is which third of the image is bright (learnable in a few steps)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int):
        label = index % CLASSES
        image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(index)) * 0.2
        image[:, :, label * 10 : label * 10 + 10] += 0.8
        return image, label


def task() -> ImageClassifier:
    return ImageClassifier("sasa_resnet26", num_classes=CLASSES, lr_per_256=0.1, warmup_epochs=0,
                           model_options={"kernel_size": 3, "attention_stages": [4]})


def trainer(**options) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, **options)


@pytest.mark.slow
def test_fit_validate_test_predict_from_plain_dataloaders():
    data = Patterns()
    classifier, run = task(), trainer()
    run.fit(classifier, DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=8))
    assert run.global_step == 3
    assert classifier.lr == pytest.approx(0.1 * 8 / 256)  # lr_per_256 scaled by the loader's batch
    assert {"val/acc1", "val/loss"} <= set(run.callback_metrics)

    (validated,) = run.validate(classifier, DataLoader(data, batch_size=8))
    (tested,) = run.test(classifier, DataLoader(data, batch_size=8))
    assert 0.0 <= validated["val/acc1"] <= 1.0 and 0.0 <= tested["test/acc1"] <= 1.0
    predictions = run.predict(classifier, DataLoader(data, batch_size=8))
    assert len(predictions) == 3
    assert predictions[0]["classes"].shape == (8, CLASSES) and predictions[0]["probabilities"].shape == (8, CLASSES)


@pytest.mark.slow
def test_the_batch_of_a_dataloader_given_a_batch_sampler_scales_the_learning_rate():
    data = Patterns()
    classifier, run = task(), trainer(limit_train_batches=1, limit_val_batches=0)
    run.fit(classifier, DataLoader(data, batch_sampler=BatchSampler(RandomSampler(data), batch_size=4, drop_last=True)))
    assert run.global_step == 1
    assert classifier.lr == pytest.approx(0.1 * 4 / 256)


def test_a_dataloader_without_a_batch_size_is_refused_in_one_line():
    data = Patterns()
    with pytest.raises(ConfigError, match="neither the data module nor the train DataLoader has one"):
        trainer(limit_train_batches=1, limit_val_batches=0).fit(task(), DataLoader(data, batch_size=None))
