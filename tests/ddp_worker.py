"""Started by tests/test_distributed.py through torchrun: trains a lesson for a few steps in this
process and saves this rank's state dict to <out>/rank<r>.pt. For lesson 05 it also saves the
timesteps t that q_sample drew at each step (<out>/rank<r>_t.pt), and with STOP_AT=n in the
environment it sends itself SIGTERM during step n (a preemption: the run saves and stops).

usage: torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py LESSON OUT '{"flag": value}'
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common

name, out, flags = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
lesson = common.lesson(name)
drawn = []
if hasattr(lesson, "q_sample"):
    q_sample = lesson.q_sample

    def recording(x0, sched, t):
        drawn.append(t.clone())
        if len(drawn) == int(os.environ.get("STOP_AT", 0)):
            os.kill(os.getpid(), signal.SIGTERM)
        return q_sample(x0, sched, t)

    lesson.q_sample = recording
try:
    model = lesson.train(lesson.Config(**flags, out=out))
    torch.save(model.state_dict(), Path(out) / f"rank{common.rank()}.pt")
except common.Interrupted:
    pass
torch.save(drawn, Path(out) / f"rank{common.rank()}_t.pt")
common.teardown()
