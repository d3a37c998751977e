"""Every lesson (lessons/NN_*.py) runs in its fast mode and exits 0; a few print
their key line. A lesson's asserts check its numbers, so a package change that
breaks what a lesson teaches fails here."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSONS = sorted(p.name for p in LESSONS_DIR.glob("[0-9][0-9]_*.py"))
TIMEOUT = 120

# a line each of these lessons must print (the result it exists to show)
KEY_LINES = {
    "03_bag_encoder.py": "finite-difference check",
    "04_infonce.py": "finite differences, symmetric=True",
    "05_train_bag.py": "TF-IDF + SVD 100 + L2",
    "06_transformer_block.py": "the whole transformer",
    "07_crops_vs_dropout.py": "in-batch accuracy over the last steps",
    "10_many_processes.py": "finite differences across 2 processes",
}


def test_there_are_ten_lessons():
    assert len(LESSONS) == 10, LESSONS


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_runs_in_fast_mode(lesson, tmp_path):
    env = dict(os.environ, MINEMBED_FAST="1")      # MINEMBED_CACHE: the test session's (conftest)
    args = [sys.executable, str(LESSONS_DIR / lesson)]
    if lesson.startswith("08_"):
        args += ["--out", str(tmp_path)]
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert res.returncode == 0, f"{lesson} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert f"lesson {int(lesson[:2])} OK" in res.stdout
    if lesson in KEY_LINES:
        assert KEY_LINES[lesson] in res.stdout
    if lesson.startswith("08_"):
        assert (tmp_path / "map.png").is_file()
