"""Started by tests/test_distributed.py through torchrun: trains a lesson for a few steps through
the lessons' own entry point (common.main, as `python LESSON.py FLAGS` does) and saves this rank's
state dict to <out>/rank<r>.pt. For lesson 05 it also saves the timesteps t that q_sample drew at
each step (<out>/rank<r>_t.pt), and with STOP_AT=n in the environment it sends itself SIGTERM
during step n (a preemption: the run saves, leaves the process group and exits 143, which this
worker turns into 0 for torchrun).

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

name, out, flags = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
lesson, rank = common.lesson(name), int(os.environ["RANK"])
drawn = []
if hasattr(lesson, "q_sample"):
    q_sample = lesson.q_sample

    def recording(x0, sched, t):
        drawn.append(t.clone())
        if len(drawn) == int(os.environ.get("STOP_AT", 0)):
            os.kill(os.getpid(), signal.SIGTERM)
        return q_sample(x0, sched, t)

    lesson.q_sample = recording


def train_and_save(cfg):
    torch.save(lesson.train(cfg).state_dict(), out / f"rank{rank}.pt")


argv = [f"--{k.replace('_', '-')}" if v is True else f"--no-{k.replace('_', '-')}" if v is False
        else f"--{k.replace('_', '-')}={v}" for k, v in {**flags, "out": str(out)}.items()]  # fmt: skip
try:
    common.main(train_and_save, lesson.Config, argv)
except SystemExit as e:
    if e.code != 143:  # 143: stopped by STOP_AT's SIGTERM after its checkpoint
        raise
torch.save(drawn, out / f"rank{rank}_t.pt")
