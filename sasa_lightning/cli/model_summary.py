"""Lightning's model summary without its FLOPs column.

Lightning counts FLOPs by running the task's example_input_array, which the tasks do not have (the
image size is the data's), so every run printed a FLOPs column of 0s and "0 Total Flops", which a
user reads as broken. The paper's counts (multiply-adds at the paper's resolutions, attention
included) are `sasa summary`'s.
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary

from ..compat import summary_table_without_flops

# Lightning's own logger for the summary, which its loggers' set-up shows at INFO.
log = logging.getLogger("lightning.pytorch.callbacks.model_summary")


class ModelSummary(LightningModelSummary):
    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        log.info("\n" + summary_table_without_flops(total_parameters, trainable_parameters, model_size,
                                                     total_training_modes, columns))
