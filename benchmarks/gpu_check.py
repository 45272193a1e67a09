"""One call that measures the CUDA paths, for the day a GPU is at hand.

    python benchmarks/gpu_check.py          # on a CUDA GPU: every row below, meant to take < 8 minutes
    python benchmarks/gpu_check.py --dry    # (the default without CUDA) the same rows, tiny, on a CPU

Every row runs in its own process, so that one failure cannot stop the others:
  - each lesson for --steps steps on its built-in data with bf16 autocast (--precision auto: bf16
    on CUDA), then the same with --compile (04 and 05 read the tokenizer the 02 row trains);
  - lesson 02 under torchrun with one process (the DDP code path, NCCL on a GPU);
  - the three speed benchmarks (quantizer, AR sampling, diffusion sampling) on the device.
It writes one table to <--out>/gpu_check.md and prints it: what ran, its exit status, seconds,
training steps/s and images/s (logged steps over their seconds in metrics.jsonl, so start-up,
compilation and the final evaluation are left out), peak GPU memory, and the last line of the
error of any row that failed; the benchmarks' own tables follow it. The tests run the dry
version, so this script cannot rot while no GPU is at hand.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ["01_vq", "02_rq", "03_vqgan", "04_rq_transformer", "05_vq_diffusion"]
# the same rows either way; --dry shrinks every network and batch to run in seconds on a CPU
TINY = {
    "all": ["--batch-size", "8", "--eval-images", "8"],
    "03_vqgan": ["--ch", "8", "--disc-ch", "8", "--disc-start", "0", "--disc-warmup", "0"],
    "04_rq_transformer": ["--width", "16", "--heads", "2", "--samples-per-class", "1"],
    "05_vq_diffusion": ["--width", "16", "--heads", "2", "--layers", "2", "--steps-T", "4",
                        "--stride", "2", "--samples-per-class", "1"],
}  # fmt: skip
FULL = {  # a GPU: the lessons' own networks; a short evaluation so that training dominates
    "all": ["--eval-images", "256"],
    "03_vqgan": ["--disc-start", "100", "--disc-warmup", "50"],  # D and the adaptive weight run too
    "04_rq_transformer": ["--samples-per-class", "4"],
    "05_vq_diffusion": ["--samples-per-class", "4", "--stride", "10"],
}
BENCHMARKS = {  # name: (flags on a GPU, flags of the dry run)
    "quantizer_speed": (["--N", "16384", "--K", "512", "16384", "--no-theirs"],
                        ["--N", "256", "--d", "16", "--K", "128", "--repeats", "1", "--no-theirs"]),
    "ar_sampling_speed": (["--batch", "64", "128"],
                          ["--K", "64", "--batch", "2", "--T", "4", "--D", "2", "--width", "32",
                           "--spatial-layers", "1", "--depth-layers", "1", "--repeats", "1"]),
    "diffusion_sampling_speed": (["--strides", "1", "10"],
                                 ["--strides", "50", "--batch", "2", "--K", "64", "--D", "2", "--H", "2",
                                  "--width", "32", "--layers", "3"]),
}  # fmt: skip


def lpips_cached() -> bool:
    """LPIPS needs two downloads; a machine without internet trains 03 without it."""
    ckpts = Path(torch.hub.get_dir()) / "checkpoints"
    return all((ckpts / f).exists() for f in ("vgg16-397923af.pth", "lpips_vgg_v0.1.pth"))


def throughput(run: Path, batch: int) -> dict:
    """steps/s, images/s and peak GPU memory (GiB) from the logged steps of a run's metrics.jsonl."""
    log = run / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    steps = [r for r in records if "seconds" in r and not r.get("final")]
    out = {"mem": max((r.get("peak_mem_gib", 0) for r in records), default=0) or None}
    if len(steps) >= 2 and steps[-1]["seconds"] > steps[0]["seconds"]:
        rate = (steps[-1]["step"] - steps[0]["step"]) / (steps[-1]["seconds"] - steps[0]["seconds"])
        out.update(steps_s=rate, images_s=rate * batch)
    return out


def execute(name: str, cmd: list[str], timeout: int) -> dict:
    """Run one row: {name, rc, seconds, error (last stderr line), stdout}."""
    start = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or "", f"past {timeout} s"
        out = out.decode() if isinstance(out, bytes) else out
    lines = [line for line in (err or "").replace("\r", "\n").splitlines() if line.strip()]
    error = "" if rc == 0 else (lines[-1] if lines else "(no message)")
    return {"name": name, "rc": rc, "seconds": time.monotonic() - start, "error": error, "stdout": out}


def table(rows: list[dict]) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lines = [
        "| run | exit | seconds | steps/s | images/s | peak GPU GiB | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['rc']} | {r['seconds']:.0f} | {fmt(r.get('steps_s'), '.2f')} | "
            f"{fmt(r.get('images_s'), '.0f')} | {fmt(r.get('mem'), '.2f')} | {r['error'].replace('|', '/')[:160]} |"
        )
    return "\n".join(lines)


def plan(dry: bool, steps: int, out: Path, lpips: bool) -> list[dict]:
    """The rows: {name, cmd, run (its folder, or None for a benchmark), batch}, in running order."""
    device, sizes, log_every = ("cpu", TINY, "1") if dry else ("cuda", FULL, "25")
    rows = []
    for compiled in (False, True):
        for lesson in LESSONS:
            run = out / (lesson + ("_compiled" if compiled else ""))
            flags = ["--steps", str(steps), "--log-every", log_every, "--out", str(run), "--overwrite",
                     "--device", device, *sizes["all"], *sizes.get(lesson, [])]  # fmt: skip
            if lesson in ("04_rq_transformer", "05_vq_diffusion"):
                flags += ["--tokenizer", str(out / "02_rq" / "ckpt.pt")]  # the 02 row's
            if lesson == "02_rq":
                flags += ["--depth", "2"]  # the code grid 04 and 05 are trained on
            name = lesson + (" compiled" if compiled else "")
            if lesson == "03_vqgan" and not lpips:
                flags += ["--perceptual-weight", "0"]
                name += " (no LPIPS)"
            flags += ["--compile"] if compiled else []
            rows.append({"name": name, "cmd": [sys.executable, f"{lesson}.py", *flags], "run": run,
                         "batch": batch_size(lesson, flags)})  # fmt: skip
    run = out / "02_rq_torchrun"
    flags = ["--steps", str(steps), "--log-every", log_every, "--out", str(run), "--overwrite",
             "--depth", "2", *sizes["all"]]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    rows.append({"name": "torchrun", "cmd": [*torchrun, "02_rq.py", *flags], "run": run,
                 "batch": batch_size("02_rq", flags)})  # fmt: skip
    for bench, (full, tiny) in BENCHMARKS.items():
        cmd = [sys.executable, f"benchmarks/{bench}.py", "--device", device, *(tiny if dry else full)]
        rows.append({"name": bench, "cmd": cmd, "run": None, "batch": None})
    return rows


def batch_size(lesson: str, flags: list[str]) -> int:
    """The images per step of a row: its --batch-size, else the lesson's default."""
    if "--batch-size" in flags:
        return int(flags[flags.index("--batch-size") + 1])
    sys.path.insert(0, str(ROOT))
    import common

    return common.lesson(lesson).Config().batch_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action=argparse.BooleanOptionalAction, default=None,
                   help="the tiny CPU version (default: when there is no CUDA device)")  # fmt: skip
    p.add_argument("--steps", type=int, default=None, help="training steps per lesson (default: 300, dry 3)")
    p.add_argument(
        "--out", default="runs/gpu_check", help="run folders, the benchmarks' outputs and gpu_check.md"
    )
    p.add_argument(
        "--only", nargs="+", default=None, help="run only the rows of these names (as in the table)"
    )
    args = p.parse_args(argv)
    dry = not torch.cuda.is_available() if args.dry is None else args.dry
    if not dry and not torch.cuda.is_available():
        raise SystemExit("error: --no-dry needs a CUDA device; this machine has none")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = plan(dry, args.steps or (3 if dry else 300), out, lpips=not dry and lpips_cached())
    if args.only:
        unknown = set(args.only) - {r["name"] for r in rows}
        if unknown:
            raise SystemExit(
                f"error: --only {' '.join(sorted(unknown))}: the rows are {', '.join(r['name'] for r in rows)}"
            )
        rows = [r for r in rows if r["name"] in args.only]
    done = []
    for row in rows:
        if row["run"] is not None:  # a row that fails before it logs must not show an older run's speed
            (row["run"] / "metrics.jsonl").unlink(missing_ok=True)
        result = execute(row["name"], row["cmd"], 300 if dry else 240)
        if row["run"] is not None:
            result.update(throughput(row["run"], row["batch"]))
        else:
            (out / f"{row['name']}.txt").write_text(result["stdout"])
        done.append(result)
        print(table(done[-1:]).splitlines()[-1], flush=True)
    what = "dry run on a CPU" if dry else torch.cuda.get_device_name()
    report = [f"# gpu_check: {what}, torch {torch.__version__}\n", table(done), ""]
    for r in done:
        if r["name"] in BENCHMARKS:
            report += [f"## {r['name']}\n", "```", r["stdout"].rstrip(), "```", ""]
    (out / "gpu_check.md").write_text("\n".join(report))
    print(f"\n{table(done)}\n\nwrote {out / 'gpu_check.md'}")
    return 0 if all(r["rc"] == 0 for r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
