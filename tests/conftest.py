"""Shared test setup: offline Hugging Face, a derandomized hypothesis profile, lesson imports."""

import os
import sys
import tempfile
from pathlib import Path

# Before anything imports `datasets`: never touch the network, keep caches out of the home folder.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf-home-"))

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
