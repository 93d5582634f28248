"""A callback for the DeepSpeed test: each process writes the sum of its buffers as its first
validation batch starts, i.e. what that process evaluates with."""

from pathlib import Path

import lightning as L


class BufferProbe(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            total = sum(float(b.double().sum()) for b in pl_module.buffers() if b.is_floating_point())
            path = Path(trainer.default_root_dir) / f"buffers_step{trainer.global_step}_rank{trainer.global_rank}.txt"
            path.write_text(repr(total))
