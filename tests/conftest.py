"""Shared test setup: offline Hugging Face, a derandomized hypothesis profile, lesson imports."""

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

import pytest
import torch
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def vq():
    return common.lesson("01_vq")
