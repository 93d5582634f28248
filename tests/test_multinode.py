"""Multi-node without a cluster: two torchrun "nodes" of one process each on this machine."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "helpers" / "multinode_worker.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_form_one_ddp_group_and_synchronise_gradients(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # torchrun's environment, not SLURM's
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
             str(WORKER), str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    for output in outputs:
        assert "process-group threads at exit: 0" in output.splitlines(), output[-2000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["global_rank"], r["node_rank"], r["local_rank"], r["world_size"]) for r in ranks] == [(0, 0, 0, 2), (1, 1, 0, 2)]
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])  # each node trained on its own samples...
    assert len(ranks[0]["gradients"]) == 3
    assert ranks[0]["gradients"] == ranks[1]["gradients"]  # ...and every step's gradients were averaged over both
    assert ranks[0]["weights"] == ranks[1]["weights"]
