"""Scale: does training on a corpus larger than memory stay within bounded memory?

Generates a corpus of ``--gb`` gigabytes (one document per line, a few
sentences each, drawn from a pool of real-ish sentences) in a temporary
directory, then runs each phase of ``minembed train`` in its own subprocess and
reports its wall time and peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``,
which counts resident pages of memory-mapped files too):

    tokenizer   train the tokenizer (on at most TOKENIZER_SAMPLE_DOCS documents)
    tokenise    stream the corpus into memory-mapped .npy id files
    train       build the crop sampler on the memmap and run --steps training steps

    python benchmarks/bench_scale.py --gb 1
    python benchmarks/bench_scale.py --gb 5 --dir /big/tmp

Everything is deleted afterwards unless --keep. Not run in CI.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS = ("time person year way day thing man world life hand part child eye woman place work week "
         "case point government company number group problem fact model data train corpus memory "
         "disk network layer signal gradient vector token sentence document river mountain city "
         "music history science language market energy water light system theory table result "
         "good new first last long great little own other old right big high different small large "
         "next early young important few public bad same able make take see come think look want "
         "give use find tell ask seem feel try leave call keep run move live believe "
         "hold bring").split()


def make_sentences(rng, n=20000):
    out = []
    for _ in range(n):
        k = int(rng.integers(12, 40))
        words = rng.choice(WORDS, size=k)
        s = " ".join(words)
        out.append(s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!"]))
    return out


def generate(path, gb, seed=0):
    """Write about ``gb`` GB of documents (1 to 12 sentences each) to ``path``."""
    rng = np.random.default_rng(seed)
    sents = make_sentences(rng)
    target = int(gb * 1e9)
    written = 0
    t0 = time.perf_counter()
    with open(path, "w", encoding="utf-8", buffering=1 << 22) as f:
        while written < target:
            n_docs = 20000
            n_per = rng.integers(1, 13, size=n_docs)
            idx = rng.integers(0, len(sents), size=int(n_per.sum()))
            block, pos = [], 0
            for n in n_per:
                block.append(" ".join(sents[i] for i in idx[pos:pos + n]))
                pos += n
            data = "\n".join(block) + "\n"
            f.write(data)
            written += len(data)
            print(f"\rgenerating: {written / 1e9:.2f} / {gb:g} GB", end="", file=sys.stderr)
    print(f"\rgenerated {written / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return written


PHASES = {
    "tokenizer": """
from minembed import Corpus
Corpus(CORPUS).tokenizer(VOCAB)
""",
    "tokenise": """
from minembed import Corpus
src = Corpus(CORPUS)
tc = src.tokenized(src.tokenizer(VOCAB), progress=True)
print("RESULT", {"documents": tc.n_docs, "tokens": tc.n_tokens,
                 "sentences": int(tc.meta["n_sents"]),
                 "bytes_on_disk": sum(os.path.getsize(os.path.join(tc.path, f))
                                      for f in os.listdir(tc.path))})
""",
    "train": """
from minembed import TrainConfig
from minembed.product.run import train
m = train(CORPUS, OUT, TrainConfig(vocab_size=VOCAB, dim=64, batch_size=256, max_steps=STEPS,
                                   members=1),
          quiet=True, checkpoint_every=STEPS // 2)
""",
}


def run_phase(name, corpus, env, vocab, steps, out):
    code = "import os\n" + PHASES[name].replace("CORPUS", repr(corpus)).replace(
        "VOCAB", str(vocab)).replace("STEPS", str(steps)).replace("OUT", repr(out))
    # a fresh interpreter for each phase: wrap it so that the child reports its own peak RSS
    wrapper = code + ("\nimport resource\nprint('PEAK_RSS_KB', "
                      "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", wrapper], env=env, stdout=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"phase {name} failed ({p.returncode})")
    rss_kb, result = 0, {}
    for line in p.stdout.splitlines():
        if line.startswith("PEAK_RSS_KB"):
            rss_kb = int(line.split()[1])
        elif line.startswith("RESULT"):
            result = eval(line[len("RESULT"):])  # our own dict literal
    return {"phase": name, "seconds": round(dt, 1),
            "peak_rss_mb": round(rss_kb / 1024, 1), **result}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="corpus size in GB")
    ap.add_argument("--dir", default=None,
                    help="where to put the corpus and cache (default: a temp dir)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=50, help="training steps on the corpus")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="minembed-scale-", dir=args.dir)
    try:
        corpus = os.path.join(work, "corpus.txt")
        size = generate(corpus, args.gb)
        env = dict(os.environ, MINEMBED_CACHE=os.path.join(work, "cache"))
        rows = [run_phase(name, corpus, env, args.vocab, args.steps, os.path.join(work, "model"))
                for name in PHASES]
        print(f"\ncorpus: {size / 1e9:.2f} GB ({size:,} bytes), {os.cpu_count()} CPUs")
        print(f"{'phase':10s} {'seconds':>9s} {'MB/s':>7s} {'peak RSS MB':>12s}")
        for r in rows:
            print(f"{r['phase']:10s} {r['seconds']:9.1f} {size / 1e6 / r['seconds']:7.1f} "
                  f"{r['peak_rss_mb']:12.1f}")
        tok = next(r for r in rows if r["phase"] == "tokenise")
        print(f"tokenised: {tok['documents']:,} documents, {tok['sentences']:,} sentences, "
              f"{tok['tokens']:,} tokens, {tok['bytes_on_disk'] / 1e9:.2f} GB on disk")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"corpus_bytes": size, "cpus": os.cpu_count(), "phases": rows},
                          f, indent=2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
