"""Every lesson (lessons/NN_*.py) runs in its fast mode and exits 0; most print their key lines,
checked here. A lesson's asserts check its numbers, so a package change that breaks what a lesson
teaches fails here. Each runs with TMPDIR a fresh directory, which it must leave with nothing of
minembed's in it (lesson 8 keeps its outputs only in --out DIR)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSONS = sorted(p.name for p in LESSONS_DIR.glob("[0-9][0-9]_*.py"))
TIMEOUT = 120

# lines (regular expressions, multi-line mode) each of these lessons must print: the results it
# exists to show
KEY_LINES = {
    "03_bag_encoder.py": [r"finite-difference check"],
    "04_infonce.py": [r"finite differences, symmetric=True"],
    "05_train_bag.py": [r"TF-IDF \+ SVD 100 \+ L2"],
    "06_transformer_block.py": [r"the whole transformer"],
    "07_crops_vs_dropout.py": [r"in-batch accuracy over the last steps",
                               r"^kNN accuracy \(k = 10, cosine, [\d,]+ documents\), after 6 steps",
                               r"^   untrained  0\.\d{3}$", r"^   crops      0\.\d{3}$",
                               r"^   dropout    0\.\d{3}$"],
    "08_using_embeddings.py": [r"^kNN accuracy \(k = 10\)", r"^t-SNE map of [\d,]+ documents",
                               r"^search: ", r"removed \(run with --out DIR to keep"],
    "09_making_it_fast.py": [
        r"^bag \(dim \d+, batch \d+ pairs\), 3 steps under runtime\.tuned: \d+ BLAS thread",
        r"^transformer \(dim \d+, batch \d+ pairs\), 3 steps under runtime\.tuned",
        r"^   clip \+ Adam ", r"cumulative time of the package's functions",
        r"on NumPy arrays it runs minembed\.fast\.cpu\.gelu_forward",
        r"^   GELU forward .* ms .* ms .*x   \d\.\de[+-]\d\d$",
        r"^   bag backward .* ms .* ms .*x   \d\.\de[+-]\d\d$",
        r"^   Adam on rows .* ms .* ms .*x   \d\.\de[+-]\d\d$",
        r"^bag forward: a Python loop over the views .* the twin's CSR product",
        r"^   bag +twins .* references .*gradients agree to",
        r"^   transformer twins .* references .*gradients agree to",
        r"^kernels\.cu: \d+ lines"],
    "10_many_processes.py": [r"finite differences across 2 processes"],
}


def run_lesson(lesson, tmp_path, *args):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, MINEMBED_FAST="1", TMPDIR=str(tmpdir))  # MINEMBED_CACHE: conftest's
    res = subprocess.run([sys.executable, str(LESSONS_DIR / lesson), *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, f"{lesson} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert f"lesson {int(lesson[:2])} OK" in res.stdout
    left = sorted(p.name for p in tmpdir.iterdir() if p.name.startswith("minembed"))
    assert not left, f"{lesson} left {left} in its temporary directory"
    return res.stdout


def test_there_are_ten_lessons():
    assert len(LESSONS) == 10, LESSONS


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_runs_in_fast_mode(lesson, tmp_path):
    out = run_lesson(lesson, tmp_path)
    for line in KEY_LINES.get(lesson, []):
        assert re.search(line, out, re.M), f"{lesson} did not print {line!r}:\n{out[-3000:]}"
    if lesson.startswith("08_"):  # no --out: it worked in a temporary directory, now gone
        png = re.search(r"^t-SNE map of [\d,]+ documents written to (\S+)$", out, re.M).group(1)
        assert Path(png).parent.name.startswith("minembed-lesson8-")
        assert Path(png).parent.parent == tmp_path / "tmp" and not Path(png).parent.exists()
    if lesson.startswith("09_"):  # the timed parts account for each encoder's step
        cover = [float(c) for c in re.findall(r"^   the parts together +[\d.]+ ms +([\d.]+) % "
                                              r"of the step$", out, re.M)]
        assert len(cover) == 2 and min(cover) >= 90, cover


def test_lesson_8_keeps_its_outputs_in_out_dir(tmp_path):
    out_dir = tmp_path / "out"
    out = run_lesson("08_using_embeddings.py", tmp_path, "--out", str(out_dir))
    assert f"outputs are in {out_dir}" in out
    assert (out_dir / "map.png").is_file() and (out_dir / "bag_model" / "config.json").is_file()
