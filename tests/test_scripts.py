"""Every script of the lessons starts as a process of its own (the end-to-end tier): `python
SCRIPT --help` exits 0 with its usage. The other
tests run the scripts' command lines in this process (conftest's `script`), which skips only the
start of a new interpreter; these prove the entry points themselves."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [
    p.relative_to(ROOT).as_posix()
    for p in sorted(
        [*ROOT.glob("0[1-5]_*.py"), ROOT / "fid.py", ROOT / "released.py", *ROOT.glob("beyond/*.py")]
    )
    if '__name__ == "__main__"' in p.read_text()
]


def test_the_list_holds_every_lesson_and_every_file_of_beyond():
    assert {"01_vq.py", "05_vq_diffusion.py", "fid.py", "released.py", "beyond/var.py"} <= set(SCRIPTS)
    assert len(SCRIPTS) == 7 + len(list(ROOT.glob("beyond/*.py")))


@pytest.mark.slow
@pytest.mark.parametrize("path", SCRIPTS)
def test_the_script_starts_in_its_own_process(path, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / path), "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith(f"usage: {Path(path).name}"), r.stderr[-2000:]
