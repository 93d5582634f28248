"""The Trainer `sasa fit|validate|test|predict` build: Lightning's, its limit_*_batches typed int first.

Lightning types them `float | int | None`, and jsonargparse takes the first type of a union that
accepts a value: `--trainer.limit_train_batches 1` (or `1` in a config) became 1.0, which Lightning
reads as the whole epoch, where a user (and Lightning, for an int) means one batch.
"""

from __future__ import annotations

import lightning as L


class Trainer(L.Trainer):
    def __init__(
        self,
        *,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            **kwargs,
        )
