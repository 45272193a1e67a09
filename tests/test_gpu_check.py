"""benchmarks/gpu_check.py: every row's flags parse, and its dry version runs on a CPU, so that the
one-call GPU check still works on the day a GPU is at hand."""

import importlib.util
from pathlib import Path

import pytest
import torch

import common

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dry", [True, False])
def test_every_lesson_row_of_both_versions_is_a_valid_command_line(check, dry, tmp_path):
    rows = check.plan(dry, 3, tmp_path, lpips=False)
    names = [r["name"] for r in rows]
    lessons = [n + (" (no LPIPS)" if n == "03_vqgan" else "") for n in check.LESSONS]
    assert names[:10] == lessons + [
        n.replace("03_vqgan", "03_vqgan compiled") if "LPIPS" in n else f"{n} compiled" for n in lessons
    ]
    assert names[10:] == ["torchrun", *check.BENCHMARKS]
    for r in rows:
        script = next(a for a in r["cmd"] if a.endswith(".py"))
        flags = r["cmd"][r["cmd"].index(script) + 1 :]
        if script.startswith("benchmarks/"):
            assert flags[:2] == ["--device", "cpu" if dry else "cuda"]
            continue
        cfg = common.parse(common.lesson(script[:-3]).Config, flags)  # a flag that rotted fails here
        assert cfg.device == ("cpu" if dry else "cuda") or r["name"] == "torchrun"
        assert cfg.compile == ("compiled" in r["name"]) and cfg.steps == 3
        assert r["batch"] == cfg.batch_size


@pytest.mark.slow
def test_the_dry_version_runs_and_writes_one_table_with_the_failures_named(
    check, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(check.BENCHMARKS, "ar_sampling_speed", ([], ["--no-such-flag"]))  # a row that fails
    only = ["01_vq", "quantizer_speed", "ar_sampling_speed", "diffusion_sampling_speed"]
    rc = check.main(["--dry", "--steps", "2", "--out", str(tmp_path), "--only", *only])
    assert rc == 1  # one row failed
    report = (tmp_path / "gpu_check.md").read_text()
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ") for line in report.splitlines() if line.startswith("| ")
    }
    assert set(only) <= set(rows)
    assert rows["01_vq"][1] == "0" and float(rows["01_vq"][3]) > 0  # exit 0, steps/s measured
    assert float(rows["01_vq"][4]) == pytest.approx(float(rows["01_vq"][3]) * 8, abs=1)  # x batch 8
    assert rows["quantizer_speed"][1] == "0" and rows["diffusion_sampling_speed"][1] == "0"
    assert (
        rows["ar_sampling_speed"][1] == "2"
        and "unrecognized arguments: --no-such-flag" in rows["ar_sampling_speed"][6]
    )
    assert "## quantizer_speed" in report and "RQ D=4 ours" in report  # the benchmark's own table
    with pytest.raises(SystemExit, match="--only nope: the rows are 01_vq"):
        check.main(["--dry", "--out", str(tmp_path), "--only", "nope"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is no error here")
@pytest.mark.parametrize("bench", ["quantizer_speed", "ar_sampling_speed", "diffusion_sampling_speed"])
def test_a_speed_benchmark_on_a_missing_device_is_a_one_line_error_exit_2(bench, script, tmp_path):
    code, _, err = script(f"benchmarks/{bench}.py", "--device", "cuda", cwd=tmp_path)
    assert code == 2 and err.strip().splitlines() == [
        "error: --device cuda is not available on this machine; use --device auto or cpu"
    ]
