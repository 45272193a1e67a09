"""Shared test setup: offline Hugging Face, a derandomized hypothesis profile, lesson imports, and
the exercise markers and grading hooks (exercises/plugin.py)."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before anything imports `datasets`: never touch the network, keep caches out of the home folder.
os.environ["HF_HUB_OFFLINE"] = "1"
if "HF_HOME" not in os.environ:
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf-home-")
    atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)

# The shapes classifier of sample_quality.py is trained once per test session, into a temporary file.
if "SHAPES_CLASSIFIER" not in os.environ:
    _clf_dir = tempfile.mkdtemp(prefix="shapes-clf-")
    os.environ["SHAPES_CLASSIFIER"] = os.path.join(_clf_dir, "shapes_classifier.pt")
    atexit.register(shutil.rmtree, _clf_dir, ignore_errors=True)

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
torch.set_num_threads(min(2, torch.get_num_threads()))


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
