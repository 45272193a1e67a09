"""Started by tests/test_distributed.py through torchrun: trains a lesson for a few steps in this
process and saves this rank's state dict to <out>/rank<r>.pt.

usage: torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py LESSON OUT '{"flag": value}'
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common

name, out, flags = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
lesson = common.lesson(name)
model = lesson.train(lesson.Config(**flags, out=out, overwrite=True))
torch.save(model.state_dict(), Path(out) / f"rank{common.rank()}.pt")
common.teardown()
