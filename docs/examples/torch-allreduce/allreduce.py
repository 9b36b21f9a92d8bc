"""Every rank adds its number into one sum with torch.distributed (gloo, on
CPU). Submit as a parallel request: each rank reads RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT from the environment PESC sets.

    pesc submit allreduce.py -n 3 --parallel
"""
import datetime
import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
out = os.path.join(os.environ["PESC_OUTPUT_DIR"], "output.txt")
with open(out, "w") as f:
    f.write(f"rank {rank} of {world}: sum {int(t.item())}\n")
dist.destroy_process_group()
