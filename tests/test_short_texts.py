"""Issue 28: words as tokens for the bag model, documents kept out of training, and the quality
line a run ends with."""
import json
import subprocess
import sys

import numpy as np
from click.testing import CliRunner

import minembed
from minembed.product.cli import main
from minembed.product.model import untrained
from minembed.product.quality import HELD_OUT_FEWEST, held_out_documents, quality_line
from minembed.product.tokenize import is_word_level, train_word_tokenizer

TINY = ["--members", "1", "--dim", "16", "--vocab-size", "300", "--batch-size", "16"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


TIED = ["zyzzyva once"] + [" ".join(f"w{i}" for i in range(300))] * 2 * 51  # 300 words, tied


def test_the_word_tokenizer_is_the_same_in_every_process(topic_docs):
    """Two processes train the same vocabulary (300 words of one count compete for 117 places:
    ties broken by the word, not by hash order), and a word seen once is [UNK]."""
    code = ("import hashlib; from minembed.product.tokenize import train_word_tokenizer; "
            "from tests.test_short_texts import TIED; "
            "print(hashlib.sha1(train_word_tokenizer(TIED, 120).to_str().encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)}
    assert len(outs) == 1
    tok = train_word_tokenizer(TIED, 120)
    assert is_word_level(tok) and tok.get_vocab_size() == 120
    assert tok.encode("zyzzyva").ids == [tok.token_to_id("[UNK]")]
    tok = train_word_tokenizer(topic_docs[0], 300)
    assert tok.encode("Football. GOAL").tokens == ["football", ".", "goal"]
    few = train_word_tokenizer(["only once here", "and here"], 100)  # 50 texts or fewer: all
    assert few.encode("once here").tokens == ["once", "here"]


def test_a_bag_model_of_words_gives_unknown_words_no_weight(tmp_path, topic_txt):
    out = tmp_path / "m"
    r = run("train", topic_txt, "-o", out, "-q", *TINY, "--max-steps", "20")
    assert r.exit_code == 0, r.output
    model = minembed.load(out)
    assert model.config["training"]["tokens"] == "words" and is_word_level(model.tokenizer)
    unk = model.tokenizer.token_to_id("[UNK]")
    assert np.all(model.params["tok_emb"][unk] == 0)
    assert np.all(untrained(model).params["tok_emb"][unk] == 0)
    a, b = model.encode(["football goal team", "football goal team qwzx plokij"])
    np.testing.assert_allclose(a, b, atol=1e-6)  # the unknown words change nothing
    assert not np.any(model.encode(["qwzx plokij"]))


def test_embed_counts_the_texts_of_unknown_words(tmp_path, topic_txt):
    r = run("train", topic_txt, "-o", tmp_path / "m", "-q", *TINY, "--max-steps", "5")
    assert r.exit_code == 0, r.output
    (tmp_path / "in.txt").write_text("football goal\nqwzx plokij\n\nmelody\n")
    r = run("embed", tmp_path / "m", tmp_path / "in.txt", "-o", tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    assert "1 empty, given encode(\"\")'s vector (zeros); 1 with no word the model knows, zeros " \
        "too" in r.output
    X = np.load(tmp_path / "x.npy")
    np.testing.assert_array_equal(np.linalg.norm(X, axis=1) > 0.5, [True, False, False, True])


def test_the_transformer_keeps_subwords(tmp_path, topic_txt):
    out = tmp_path / "t"
    r = run("train", topic_txt, "-o", out, "-q", "--model", "transformer", "--dim", "16",
            "--heads", "2", "--layers", "1", "--ffn", "16", "--vocab-size", "300",
            "--batch-size", "16", "--max-steps", "2", "--no-bag-init")
    assert r.exit_code == 0, r.output
    model = minembed.load(out)
    assert model.config["training"]["tokens"] == "subwords" and not is_word_level(model.tokenizer)


def test_held_out_documents_are_a_fixed_share_kept_out_of_training(tmp_path):
    usable = np.arange(3, 5003)
    held = held_out_documents(usable, 0)
    assert len(held) == 100 and np.all(np.diff(held) > 0) and np.isin(held, usable).all()
    np.testing.assert_array_equal(held, held_out_documents(usable, 0))
    assert len(np.intersect1d(held, held_out_documents(usable, 1))) < 10  # another seed's
    assert len(held_out_documents(np.arange(2400), 0)) == 0  # 48 < HELD_OUT_FEWEST
    assert len(held_out_documents(np.arange(2500), 0)) == HELD_OUT_FEWEST
    assert len(held_out_documents(np.arange(100_000), 0)) == 500


def test_members_keep_out_their_seeds_documents_and_are_still_the_runs_of_their_seeds(tmp_path):
    """--members 2 --seed 1 on the built-in corpus: member k keeps out the documents of seed
    1 + k, so its table is the run of that seed, bit for bit; the quality line scores each table
    on its own held-out documents."""
    from minembed.product.run import train
    from minembed.product.settings import TrainConfig
    cfg = TrainConfig(members=2, dim=16, vocab_size=300, batch_size=16, max_steps=6, seed=1)
    both = train(None, tmp_path / "both", cfg, quiet=True)
    singles = [train(None, tmp_path / f"s{s}", TrainConfig(**dict(
        cfg.__dict__, members=1, dim=8, seed=s)), quiet=True) for s in (1, 2)]
    np.testing.assert_array_equal(both.params["tok_emb"], np.concatenate(
        [m.params["tok_emb"] for m in singles], axis=1))
    r = both.config["quality"]["retrieval"]
    assert r["members"] == 2 and r["documents"] == 54 and 0 < r["model"] <= 1
    assert singles[0].config["quality"]["retrieval"]["members"] == 1


def test_a_run_ends_with_its_quality_line(tmp_path, topic_jsonl, topic_txt):
    """The built-in corpus (2,717 labelled documents): retrieval on the 54 documents kept out of
    training and kNN, each beside the untrained start and TF-IDF, stored in config.json, and
    the documents kept out are not trained on (fewer steps an epoch); a small labelled corpus:
    kNN alone (the topics are easy: even the random start of a bag of words does well); a small
    unlabelled one: a note."""
    spe = {}
    for flag in ("--held-out", "--no-held-out"):
        r = CliRunner().invoke(main, ["train", "-o", str(tmp_path / flag), *TINY,
                                      "--max-steps", "30", flag])
        assert r.exit_code == 0, r.output
        config = minembed.load(tmp_path / flag).config
        spe[flag] = config["training"]["steps_per_epoch"]
    usable = config["corpus"]["sentence_crops"] + config["corpus"]["token_spans"]
    assert spe == {"--held-out": (usable - 54) // 16, "--no-held-out": usable // 16}
    line = [x for x in r.output.splitlines() if x.startswith("quality: ")]  # --no-held-out
    assert line == [x for x in line if "kNN" in x and "held-out" not in x], r.output
    q = json.loads((tmp_path / "--held-out" / "config.json").read_text())["quality"]
    assert q["retrieval"]["documents"] == 54 and q["knn"]["documents"] == 2717
    assert q["retrieval"]["model"] > q["retrieval"]["untrained"]
    assert q["knn"]["model"] > q["knn"]["untrained"] + 0.05
    r = CliRunner().invoke(main, ["train", topic_jsonl, "-o", str(tmp_path / "m"), *TINY,
                                  "--max-steps", "60"])
    assert r.exit_code == 0, r.output
    line = [x for x in r.output.splitlines() if x.startswith("quality: ")]
    assert len(line) == 1 and "warning" not in r.output, r.output
    assert line[0].startswith("quality: kNN") and "labels of 240 documents" in line[0]
    q = json.loads((tmp_path / "m" / "config.json").read_text())["quality"]
    assert q["knn"]["model"] >= max(0.9, q["knn"]["untrained"]) and "retrieval" not in q
    assert f"kNN {100 * q['knn']['model']:.1f} %" in line[0]
    r = CliRunner().invoke(main, ["train", topic_txt, "-o", str(tmp_path / "u"), *TINY,
                                  "--max-steps", "5"])
    assert r.exit_code == 0, r.output
    assert "quality: not measured (fewer than 2,500 documents" in r.output


def test_the_quality_line_warns_when_training_made_it_worse():
    q = {"retrieval": {"documents": 50, "crops": "", "model": 0.5, "untrained": 0.4, "tfidf": 0.3},
         "knn": {"documents": 900, "model": 0.55, "untrained": 0.60, "tfidf": 0.61}}
    line = quality_line(q)
    assert line.startswith("quality: held-out crop retrieval MRR 0.500 (untrained 0.400, "
                           "TF-IDF 0.300; 50 documents kept out of training); kNN 55.0 % "
                           "(untrained 60.0 %, TF-IDF 61.0 %; labels of 900 documents)")
    assert "\nwarning: the trained model scores below its untrained start on kNN on the labels" \
        in line
    assert "warning" not in quality_line(dict(q, knn=dict(q["knn"], model=0.7)))
    assert quality_line({}).startswith("quality: not measured")
