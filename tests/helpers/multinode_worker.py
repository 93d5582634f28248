"""One "node" of the two-node test (tests/test_multinode.py), started by torchrun.

Trains a few DDP steps of a local self-attention layer, each rank on its own data, and writes what
it saw to <out>/rank<global rank>.json: its ranks, the indices of its samples, and after every
backward the gradients DDP left in the layer (which must then be the same on both nodes).
"""

import json
import sys
from pathlib import Path

import exit_probe  # noqa: F401  (reports this process's gloo threads at exit)
import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sasa_lightning.nn import LocalSelfAttention2d


class Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.attention = LocalSelfAttention2d(8, 8, kernel_size=3, heads=2)
        self.head = torch.nn.Linear(8, 2)
        self.seen, self.gradients = [], []

    def training_step(self, batch, batch_idx):
        images, labels, indices = batch
        self.seen += indices.tolist()
        return F.cross_entropy(self.head(self.attention(images).mean((2, 3))), labels)

    def on_after_backward(self) -> None:
        self.gradients.append(self.attention.query.grad.flatten()[:16].tolist())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out: Path) -> None:
    L.seed_everything(0)
    data = TensorDataset(torch.randn(32, 8, 6, 6), torch.randint(0, 2, (32,)), torch.arange(32))
    trainer = L.Trainer(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    model = Probe()
    trainer.fit(model, DataLoader(data, batch_size=4))
    record = {
        "global_rank": trainer.global_rank, "world_size": trainer.world_size, "node_rank": trainer.node_rank,
        "local_rank": trainer.local_rank, "seen": model.seen, "gradients": model.gradients,
        "weights": model.attention.query.flatten()[:16].tolist(),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
    # What torch asks of every training script: end the process group while the interpreter is
    # whole (a gloo thread still finishing a collective at exit aborts the process).
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
