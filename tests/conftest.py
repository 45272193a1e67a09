"""Shared test setup: offline Hugging Face, a derandomized hypothesis profile, lesson imports, the
two tiers (`python -m pytest`: the student's; `--all` adds the end-to-end tests marked slow), and
the exercise markers and grading hooks (exercises/plugin.py)."""

import atexit
import os
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

# Before anything imports `datasets`: never touch the network, keep caches out of the home folder.
os.environ["HF_HUB_OFFLINE"] = "1"
if "HF_HOME" not in os.environ:
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf-home-")
    atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)

# The shapes classifier of sample_quality.py, committed beside the tests with a digest of the code
# that trains it: retrained into this file only when that code has changed.
os.environ.setdefault("SHAPES_CLASSIFIER", str(Path(__file__).parent / "data" / "shapes_classifier.pt"))
# Under pytest-xdist (.ci/run), each worker is one process on one core: one torch thread each.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"  # also for the processes a test starts

import pytest
import torch
from hypothesis import Phase, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402

pytest_plugins = ["exercises.plugin"]

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
# the grader (python -m exercises) runs failing tests by the dozen: no time spent shrinking them
settings.register_profile(
    "grading", parent=settings.get_profile("ci"), phases=[Phase.explicit, Phase.generate]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(1 if "PYTEST_XDIST_WORKER" in os.environ else min(2, torch.get_num_threads()))


# --- the two tiers ---


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", help="also run the end-to-end tier: the tests marked slow")


def pytest_collection_modifyitems(config, items):
    """Without --all, the tests marked slow are deselected (not skipped): the student's tier. An
    explicit -m or the grader's --exercise selects by itself."""
    if config.getoption("--all") or config.getoption("-m") or config.getoption("--exercise"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config._slow_left_out = len(slow)


def pytest_terminal_summary(terminalreporter, config):
    if getattr(config, "_slow_left_out", 0):
        terminalreporter.write_line(
            f"{config._slow_left_out} end-to-end tests (marked slow) not run: `python -m pytest --all` runs them"
        )


@pytest.fixture(scope="session")
def vq():
    return common.lesson("01_vq")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A tiny lesson-02 RQ-VAE checkpoint (32 px shapes, 8x8 codes of depth 2, K = 16) for the
    stage-2 lessons 04 and 05: a few steps, enough to have every file they read."""
    rq = common.lesson("02_rq")
    out = tmp_path_factory.mktemp("tok")
    rq.train(rq.Config(steps=4, batch_size=8, eval_images=8, depth=2, out=str(out)))
    return out / "ckpt.pt"


@pytest.fixture(scope="session")
def prior05(tokenizer, tmp_path_factory):
    """A tiny lesson-05 prior trained once on `tokenizer` (2 steps, T = 4): the run folder that the
    samplers of beyond/ draw from. A test copies it into its own tmp_path first."""
    vqd = common.lesson("05_vq_diffusion")
    out = tmp_path_factory.mktemp("prior05")
    vqd.train(vqd.Config(tokenizer=str(tokenizer), steps=2, batch_size=8, eval_images=8, width=16, heads=2,
                         layers=1, steps_T=4, stride=2, samples_per_class=1, out=str(out)))  # fmt: skip
    return out


@pytest.fixture
def prior05_here(prior05, tmp_path):
    """The session's tiny lesson-05 run, copied into this test's tmp_path (returned)."""
    shutil.copytree(prior05, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture
def script(monkeypatch, capsys):
    """script(path, *args, cwd=...) runs `python path args` in this process: the file's own
    `if __name__ == "__main__":` block (runpy), without the 2 s of a new interpreter -> (exit code,
    stdout, stderr). A traceback propagates (the test errors with it). Each script also has one
    test in the slow tier that starts it in its own process."""

    def run(path, *args, cwd) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [str(ROOT / path), *map(str, args)])
        monkeypatch.syspath_prepend(str((ROOT / path).parent))  # as `python path` puts its folder first
        capsys.readouterr()  # what the test printed before
        code = 0
        try:
            runpy.run_path(str(ROOT / path), run_name="__main__")
        except SystemExit as e:
            code = 0 if e.code is None else e.code
        out, err = capsys.readouterr()
        if isinstance(code, str):  # sys.exit("message"): Python prints it and exits 1
            return 1, out, err + code + "\n"
        return code, out, err

    return run


@pytest.fixture
def tf32_on():
    """TF32 matmuls and cuDNN convolutions on, as common.get_device turns them on for CUDA;
    restored afterwards."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]
