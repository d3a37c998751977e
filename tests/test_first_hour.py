"""What a new user hit in their first hour, each fixed and pinned here: one-line
errors instead of tracebacks, progress that shows off a terminal, small and odd
corpora, no debris after a failure, text encodings, eval's baselines, messages."""
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import minembed
from minembed.product import runtime
from minembed.product import progress
from minembed.product.cli import main
from minembed.product.modeldir import write_manifest

SMALL = ["--members", "1", "--dim", "16", "--vocab-size", "300", "--batch-size", "16",
         "--max-steps", "5"]


def run(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def one_line_error(r, *fragments):
    """r: a CliRunner result or a subprocess's (its stderr)."""
    out = r.output if hasattr(r, "output") else r.stderr
    code = r.exit_code if hasattr(r, "exit_code") else r.returncode
    assert code == 1 and "Traceback" not in out, out
    err = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert len(err) == 1 and out.strip().splitlines()[-1] == err[0], out
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, topic_txt):
    out = tmp_path_factory.mktemp("fh") / "model"
    r = run("train", topic_txt, "-o", out, "-q", *SMALL)
    assert r.exit_code == 0, r.output
    return out


def cli(*args, env=None, **kw):
    """The CLI in a subprocess, stderr a pipe (not a terminal), as under nohup or CI."""
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "minembed", *map(str, args)], env=e,
                          capture_output=True, text=True, timeout=300, **kw)


# 1. tracebacks -------------------------------------------------------------

def test_gpu_without_a_gpu_is_one_line(tmp_path, topic_txt):
    if runtime.gpu_available():
        pytest.skip("this machine has a GPU")
    one_line_error(run("train", topic_txt, "-o", tmp_path / "m", "--device", "gpu"), "--device gpu")
    assert not (tmp_path / "m").exists()


def test_damaged_config_and_weights_with_matching_manifest(tmp_path, model_dir, topic_txt):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(cfg, dim=-5)))
    write_manifest(str(bad))  # re-hashed: the manifest matches the damage
    one_line_error(run("embed", bad, topic_txt, "-o", tmp_path / "x.npy"), "dim = -5")
    (bad / "config.json").write_text(json.dumps(dict(cfg, format_version=99)))
    write_manifest(str(bad))
    one_line_error(run("embed", bad, topic_txt, "-o", tmp_path / "x.npy"), "newer minembed")
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    write_manifest(str(bad))
    one_line_error(run("eval", bad, topic_txt), "model.safetensors is unreadable")


# 2. progress ---------------------------------------------------------------

def test_progress_lines_off_a_terminal(tmp_path, topic_txt):
    r = cli("train", topic_txt, "-o", tmp_path / "m", *SMALL[:-1], "40",
            env={"MINEMBED_PROGRESS_SECONDS": "0", "MINEMBED_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("training:")]
    assert len(lines) >= 10 and "40/40 steps (100%)" in lines[-1]
    assert "tokenising:" in r.stderr and "left" in lines[5]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_rate_is_smoothed_and_the_time_left_right_after_resume(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    out = io.StringIO()
    bar = progress.Progress(total=100, label="training", unit="step", done=90, file=out, every=0)
    for dt in (1.0, 1.0, 1.0, 1.0):      # resumed at 90 of 100: 1 s a step
        clock.t += dt
        bar.update(1)
    assert out.getvalue().splitlines()[-1].count("0:06 left") == 1   # 6 steps left at 1 s
    clock.t += 30.0                      # one slow step (a checkpoint, another process)
    bar.update(1)
    assert 1.0 < bar.rate < 8.0          # smoothed: not 30 s a step at once


def test_transformer_run_time_is_estimated_up_front(tmp_path, topic_txt):
    r = cli("train", topic_txt, "-o", tmp_path / "m", "--model", "transformer", "--dim", "16",
            "--layers", "1", "--heads", "2", "--ffn", "32", "--max-len", "32",
            "--vocab-size", "300", "--batch-size", "8", "--max-steps", "30")
    assert r.returncode == 0, r.stderr
    assert "estimated training time:" in r.stderr and "24 more steps" in r.stderr


def test_eval_and_map_show_progress(model_dir, topic_jsonl):
    r = cli("eval", model_dir, topic_jsonl, env={"MINEMBED_PROGRESS_SECONDS": "0"})
    assert r.returncode == 0, r.stderr
    assert "embedding the corpus:" in r.stderr and "240/240 documents (100%)" in r.stderr


# 4. small and odd corpora --------------------------------------------------

def test_one_enormous_document_is_refused_at_once(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("x" * 900_000 + "\n")
    t = time.perf_counter()
    one_line_error(run("train", p, "-o", tmp_path / "m"), "only one document", "at least 2")
    assert time.perf_counter() - t < 10 and not (tmp_path / "m").exists()


def test_a_dead_run_is_detected_and_leaves_nothing(tmp_path, topic_txt):
    r = run("train", topic_txt, "-o", tmp_path / "m", "--lr", "1e6", "--dim", "16",
            "--vocab-size", "300", "--batch-size", "16", "--max-steps", "200")
    one_line_error(r, "training is dead", "--lr")
    assert not (tmp_path / "m").exists()


# 5. leftovers --------------------------------------------------------------

def test_failed_runs_leave_no_directory(tmp_path, topic_txt):
    one_line_error(run("train", tmp_path / "nope.txt", "-o", tmp_path / "m"), "not found")
    one_line_error(run("train", topic_txt, "-o", tmp_path / "m", "--lr", "-1"), "--lr")
    assert not (tmp_path / "m").exists()


def test_finished_model_has_no_lock_and_shareable_modes(model_dir):
    assert not (model_dir / ".lock").exists()
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.json", "model.safetensors", "manifest.json", "log.jsonl"):
        assert stat.S_IMODE(os.stat(model_dir / name).st_mode) == 0o666 & ~mask, name


def test_double_ctrl_c_leaves_a_directory_a_rerun_accepts(tmp_path, topic_txt):
    code = ("import time, minembed.core.train as t\nf = t.train_step\n"
            "t.train_step = lambda *a: (time.sleep(0.2), f(*a))[1]\n"
            "from minembed.product.cli import main\nmain(prog_name='minembed')\n")
    out = tmp_path / "m"
    p = subprocess.Popen([sys.executable, "-c", code, "train", topic_txt, "-o", out,
                          *SMALL[:-1], "500",
                          "--checkpoint-every", "0"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() or not (out / "log.jsonl").read_text().strip():
        assert time.time() < deadline
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    p.wait(60)
    assert p.returncode != 0
    if out.exists():  # a checkpoint was saved before the second Ctrl-C: it resumes
        r = run("train", "--resume", out)
    else:             # nothing was saved: nothing is left, a plain rerun works
        r = run("train", topic_txt, "-o", out, "-q", *SMALL)
    assert r.exit_code == 0, r.output


# 6. encodings --------------------------------------------------------------

def test_latin1_corpus(tmp_path, topic_docs):
    p = tmp_path / "latin1.txt"
    p.write_bytes("\n".join(t + " café" for t in topic_docs[0]).encode("latin-1"))
    err = one_line_error(run("train", p, "-o", tmp_path / "m"), "not valid UTF-8")
    assert "--encoding" in err and "--errors replace" in err
    r = run("train", p, "-o", tmp_path / "m", "--encoding", "latin-1", "-q", *SMALL)
    assert r.exit_code == 0, r.output
    r = run("train", p, "-o", tmp_path / "m2", "--errors", "replace", "-q", *SMALL)
    assert r.exit_code == 0, r.output
    texts, _ = minembed.Corpus(str(p), encoding="latin-1").read()
    assert texts[0].endswith("café")


# 7. eval -------------------------------------------------------------------

def test_eval_refuses_a_single_label(tmp_path, model_dir, topic_docs):
    p = tmp_path / "one_label.jsonl"
    p.write_text("".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in topic_docs[0]))
    one_line_error(run("eval", model_dir, p), "at least two labels")


def test_eval_splits(model_dir, topic_jsonl):
    r = run("eval", model_dir, topic_jsonl, "--splits", "3", "--json")
    res = json.loads(r.output)
    for row in ("model", "tfidf", "tfidf_svd_l2", "untrained"):
        assert 0 <= res["knn"][row]["knn_cosine_sd"] < 0.2
    assert res["splits"] == 3


# 8. messages ---------------------------------------------------------------

def test_unwritable_output_names_the_file_not_a_temporary(tmp_path, model_dir, topic_txt):
    err = one_line_error(run("embed", model_dir, topic_txt, "-o",
                             tmp_path / "no" / "such" / "x.npy"))
    assert "cannot write" in err and "x.npy" in err and ".tmp" not in err


def test_unusable_cache_names_the_variable(tmp_path, topic_txt):
    (tmp_path / "file").write_text("not a directory")
    r = cli("train", topic_txt, "-o", tmp_path / "m", *SMALL,
            env={"MINEMBED_CACHE": str(tmp_path / "file" / "cache")})
    assert r.returncode == 1 and "MINEMBED_CACHE" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and not (tmp_path / "m").exists()


def test_readme_usage_lines_write_distinct_outputs():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    block = readme.split("## Use it", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    outs = [line.split(" -o ", 1)[1].split()[0] for line in block.splitlines()
            if line.startswith("minembed train") and " -o " in line]
    assert len(outs) == len(set(outs)) >= 3, outs
    for line in block.splitlines():
        assert not line.startswith("minembed train ") or " -o " in line or "--help" in line, line
