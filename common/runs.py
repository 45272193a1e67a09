"""A run folder: metrics.jsonl, ckpt.pt with --resume and Ctrl-C, image grids.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoints import load_checkpoint, load_state, rng_state, save_atomic, set_rng_state
from .device import echo, get_device, progress, seed_everything
from .dist import dist_on, distributed, is_main
from .errors import Interrupted, UserError
from .loading import load_data


class Run:
    """A run folder: ckpt.pt (atomic), metrics.jsonl (one JSON object per line), figures.

    A fresh run refuses to write over an existing checkpoint unless --overwrite, and replaces
    the old files only when it writes its own (a run that fails on its data loses nothing);
    --resume loads the checkpoint, checks that the flags that shape the model match the saved
    config, and cuts metrics.jsonl back to the checkpoint's step. The training loops iterate
    `run.steps(start)`, which turns Ctrl-C / SIGTERM into a checkpoint and exit 130 / 143.
    """

    RESUMABLE = frozenset(  # flags that may change between a run and its --resume (a Config adds its own)
        {"steps", "compile", "precision", "resume", "overwrite", "log_every", "ckpt_minutes"}
        | {"device", "eval_images", "out"}  # the folder may have moved
    )

    def __init__(self, cfg):
        self.cfg, self.dir = cfg, Path(cfg.out)
        self.ckpt_path = self.dir / "ckpt.pt"
        sample_only = getattr(cfg, "sample_only", False)  # lessons 04-05: read the checkpoint, write pictures
        if self.ckpt_path.exists() and not (cfg.resume or cfg.overwrite or sample_only):
            raise UserError(
                f"{self.ckpt_path} exists; pass --resume to continue that run, --overwrite to replace it, or another --out"
            )
        for flag, wanted in (("--resume", cfg.resume), ("--sample-only", sample_only)):
            if wanted and not self.ckpt_path.exists():
                raise UserError(f"{flag}: no checkpoint at {self.ckpt_path}")
        created = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {self.dir}: {e.strerror}") from None
        if is_main():
            lock(self.dir, created)  # one run at a time in a folder
        # A fresh run logs beside the old log and replaces it with its first checkpoint: a run that
        # fails before it saves leaves the old run's ckpt.pt and metrics.jsonl as they were.
        self.log_path = self.dir / "metrics.jsonl"
        if not cfg.resume and self.log_path.exists():
            self.log_path = self.dir / "metrics.jsonl.new"
        self.fresh_log = not cfg.resume  # the first log() of a fresh run starts its file
        self.saved_step, self.saved_at, self.signalled = None, time.monotonic(), None
        self.began = self.saved_at

    def log(self, record: dict) -> None:
        """Append a record to metrics.jsonl with the seconds since this Run began and, on CUDA,
        the peak GPU memory so far (GiB): what throughput and memory are read from."""
        record = {**record, "seconds": round(time.monotonic() - self.began, 3)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            record["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if is_main():  # under torchrun, rank 0 writes for everyone
            with writing(self.log_path), open(self.log_path, "w" if self.fresh_log else "a") as f:
                f.write(json.dumps(record) + "\n")
            self.fresh_log = False

    def steps(self, start: int):
        """start, ..., cfg.steps - 1 with a progress bar. While it runs, Ctrl-C and SIGTERM (what
        a cluster sends before preemption) only set a flag: the loop saves at the end of that
        step (save_due is True), and then Interrupted says how to resume."""

        def on_signal(signum, frame):
            self.signalled = signum

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for step in progress(
                range(start, self.cfg.steps), initial=start, total=self.cfg.steps, desc=self.cfg.out
            ):
                yield step
                if self.signalled is not None:
                    name = signal.Signals(self.signalled).name
                    again = [a for a in sys.argv if a != "--overwrite"]
                    again += [] if "--resume" in again else ["--resume"]
                    raise Interrupted(
                        f"{name} at step {step + 1}: saved {self.ckpt_path}; continue with: python {' '.join(again)}",
                        128 + self.signalled,
                    )
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def check_finite(self, loss: torch.Tensor, step: int, flags: str = "--lr") -> None:
        """Stop at the first NaN or infinite loss, before it reaches a checkpoint (a device sync)."""
        if not torch.isfinite(loss.detach()).all():
            kept = (
                f"{self.ckpt_path} keeps step {self.saved_step}" if self.saved_step else "nothing was saved"
            )
            raise UserError(
                f"the loss became {loss.item()} at step {step}; training stopped and {kept}; lower {flags}"
            )

    def save_due(self, step: int) -> bool:
        """Save now? At the last step, after --ckpt-minutes without a save, and after Ctrl-C / SIGTERM (agreed by every process under torchrun)."""
        stop = torch.tensor(float(self.signalled is not None))
        if dist_on():  # nccl reduces CUDA tensors only
            if torch.distributed.get_backend() == "nccl":
                stop = stop.cuda()
            torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
            self.signalled = self.signalled or (signal.SIGTERM if stop.item() else None)
        late = self.cfg.ckpt_minutes * 60 <= time.monotonic() - self.saved_at
        return step == self.cfg.steps or late or bool(stop.item())

    def save(self, step: int, **state) -> None:
        """Write ckpt.pt atomically: {"step", "lesson", "config", "rng", **state} (state dicts).
        Rank 0 only under torchrun (every rank holds the same weights). Weights that are not
        finite never replace a checkpoint."""
        self.saved_at = time.monotonic()
        rng = [rng_state()]
        if dist_on():  # every rank draws its own noise (see restore): rank 0 saves them all
            rng = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(rng, rng_state())
        if not is_main():
            return
        model = state.get("model", {})
        if not all(v.isfinite().all() for v in model.values() if v.is_floating_point()):
            raise UserError(
                f"the weights became NaN or infinite by step {step}; {self.ckpt_path} was not overwritten; lower --lr"
            )
        payload = {
            "step": step,
            "lesson": lesson_name(self.cfg),  # whose Config and build() rebuild the model
            "config": dataclasses.asdict(self.cfg),
            "rng": rng[0],
            **({"rng_ranks": rng} if len(rng) > 1 else {}),  # torchrun: each rank's own stream
            **state,
        }
        save_atomic(payload, self.ckpt_path)
        self.saved_step = step
        log = self.dir / "metrics.jsonl"
        with writing(log):  # the old run's log must not outlive its checkpoint
            if self.log_path != log:
                if self.fresh_log:  # nothing logged yet
                    self.log_path.write_text("")
                os.replace(self.log_path, log)
            elif self.fresh_log:
                log.write_text("")
        self.log_path, self.fresh_log = log, False

    def load(self, lesson: str | None = None) -> dict:
        """ckpt.pt, checked: written by this lesson (or by `lesson`: a tool that samples from another
        lesson's prior), with the same model flags, at a step within --steps; the RNG restored."""
        ckpt = load_checkpoint(self.ckpt_path)
        mine, flag = (
            lesson or lesson_name(self.cfg),
            "--sample-only" if getattr(self.cfg, "sample_only", False) else "--resume",
        )
        if ckpt.get("lesson") != mine:
            raise UserError(
                f"{flag}: {self.ckpt_path} was written by {ckpt.get('lesson') or 'another script'}, not {mine}; pass another --out"
            )
        saved, now = ckpt["config"], dataclasses.asdict(self.cfg)
        # a flag newer than the checkpoint: it was made with what is now that flag's default
        defaults = {f.name: f.default for f in dataclasses.fields(self.cfg)}
        saved = {k: saved.get(k, defaults[k]) for k in now}
        free = resumable(self.cfg) | ({"tokenizer"} if flag == "--sample-only" else set())  # (moved files)
        diff = [
            f"--{k.replace('_', '-')} {saved[k]} (now {now[k]})"
            for k in now
            if k not in free and saved[k] != now[k]
        ]
        if diff:
            raise UserError(f"{flag}: {self.ckpt_path} was made with different flags: {'; '.join(diff)}")
        if ckpt["step"] > self.cfg.steps:
            raise UserError(
                f"--resume: {self.ckpt_path} is at step {ckpt['step']}, past --steps {self.cfg.steps}; pass --steps above {ckpt['step']} to train on"
            )
        rank, world = distributed()
        ranks = ckpt.get("rng_ranks", [ckpt["rng"]])
        if len(ranks) == world:
            set_rng_state(ranks[rank])
        else:  # another number of processes than the run had: fresh streams, exact no more
            seed_everything(rank_seed(self.cfg.seed + ckpt["step"], rank))
        return ckpt

    def restore(self, **state) -> int:
        """With --resume, load every named module or optimizer from ckpt.pt (and this rank's RNG
        state), and drop the metrics.jsonl lines after its step (they are about to be redone);
        return the step to continue from (0 for a fresh run). Called once the model is built: under
        torchrun a fresh run then seeds each rank apart (DDP copies rank 0's weights to all), so
        that W ranks draw W different timesteps, masks and dropped labels, not one draw W times."""
        if not self.cfg.resume:
            rank, world = distributed()
            if world > 1:
                seed_everything(rank_seed(self.cfg.seed, rank))
            return 0
        ckpt = self.load()
        for key, obj in state.items():
            if key not in ckpt:
                raise UserError(
                    f"checkpoint {self.ckpt_path} has no '{key}': it was not written by this lesson"
                )
            if isinstance(obj, nn.Module):
                load_state(obj, ckpt[key], self.ckpt_path)
            else:
                obj.load_state_dict(ckpt[key])
        self.saved_step = ckpt["step"]
        if (self.dir / "metrics.jsonl").exists() and is_main():
            records, dropped = read_log(self.dir, dropped=True)
            if dropped:
                echo(f"--resume: dropped {dropped} unreadable line(s) of {self.dir / 'metrics.jsonl'}")
            kept = [r for r in records if r.get("step", 0) <= ckpt["step"] and not r.get("final")]
            with writing(self.dir / "metrics.jsonl"):
                (self.dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        return ckpt["step"]


def resumable(cfg) -> frozenset:
    """The flags that may change between a run and its --resume: Run's, and the sampling flags
    that the Config's class declares in its RESUMABLE."""
    return Run.RESUMABLE | getattr(type(cfg), "RESUMABLE", frozenset())


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's random stream under torchrun."""
    return seed * 100_003 + rank


def read_log(run_dir, dropped: bool = False):
    """The records of a run folder's metrics.jsonl ([] when it has none). A line that is not a JSON
    object (a kill or a full disk mid-write, a damaged file) is left out; dropped=True: -> (records,
    how many lines were left out)."""
    log, records, bad = Path(run_dir) / "metrics.jsonl", [], 0
    lines = log.read_bytes().decode("utf-8", "replace").splitlines() if log.exists() else []
    for line in filter(str.strip, lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return (records, bad) if dropped else records


class writing:
    """`with writing(path):` turns a failed write (read-only folder, full disk) into one line."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if isinstance(e, OSError):
            raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None


def lock(folder: Path, created: bool = False) -> None:
    """Hold the run folder for this process: folder/.lock names its pid and host. A lock of a live
    process is a UserError; one of a process that is gone (on this host) is taken over. The lock
    goes when the process exits, and with it the folder if this run created it and wrote nothing
    (a run that failed before its first file)."""
    path, me = folder / ".lock", f"{os.getpid()} {socket.gethostname()}"
    if path.exists():
        owner = path.read_text().split()
        pid, host = (int(owner[0]), owner[1]) if len(owner) == 2 and owner[0].isdigit() else (0, "")
        if pid != os.getpid() and (host != socket.gethostname() or alive(pid)):
            where = f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on {host}"
            raise UserError(
                f"{folder} is in use by another run ({where}); wait for it, pass another --out, or delete {path} if that run is gone"
            )
    with writing(path):
        path.write_text(me)

    def release():
        if path.exists() and path.read_text() == me:
            path.unlink()
            if created and not any(folder.iterdir()):
                folder.rmdir()

    atexit.register(release)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return pid > 0


def lesson_name(cfg) -> str:
    """The file stem of the lesson whose Config this is ("02_rq"), also when that lesson runs as
    the script (its module is then called __main__)."""
    return Path(sys.modules[type(cfg).__module__].__file__).stem


def start(cfg):
    """What every tokenizer lesson (01-03) does first: (rank, world) under torchrun, the device,
    the seed, the run folder, and the data -> (device, rank, world, run, train_set, val_set)."""
    rank, world = distributed()  # (0, 1) unless launched by torchrun
    device = get_device(cfg.device)
    seed_everything(cfg.seed)
    run = Run(cfg)
    train_set, val_set, _ = load_data(cfg, rank, world)
    return device, rank, world, run, train_set, val_set
