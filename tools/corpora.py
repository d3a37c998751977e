"""Build labelled evaluation corpora from Debian packages, for kNN evaluation of embeddings.

    python tools/corpora.py OUT_DIR [--only NAME ...] [--cache DIR] [--refresh]

writes OUT_DIR/NAME.jsonl.gz (one {"text": ..., "label": ...} per line, gzip with
mtime 0) for each corpus and prints its statistics. The corpora are outputs: never
commit them. Each is a different genre from minembed's built-in corpus (API
docstrings) and from each other:

  wordnet   Dictionary definitions. Every noun and verb synset of WordNet 3.0
            (Debian package wordnet-base) as "lemma, lemma: gloss; examples",
            labelled by its lexicographer file: noun.animal, noun.food,
            verb.motion, ... (40 labels; the adjective and adverb files are
            parts of speech rather than topics, and noun.Tops is 51 synsets
            of top-level concepts). At most MAX_DOCS documents, large labels
            capped, small ones kept whole.
  fortunes  Humour and quotations: the fortune cookies of the Debian packages
            fortunes and fortunes-min, labelled by their file (art, computers,
            food, law, love, medicine, politics, science, sports, startrek,
            ...). Only the files named after a subject are kept; files named
            after a form or a source (riddles, definitions, songs-poems,
            humorists, zippy, ...) are not topics and are left out.
  debian    Software descriptions: the long descriptions of Debian bookworm's
            main archive (Translation-en, joined to the Packages index by
            Description-md5), labelled by Section (games, graphics, science,
            sound, mail, ...). One package per source package, so that the
            near-identical descriptions of foo, foo-data and foo-common do not
            become each other's neighbours; sections that name a kind of
            package (libs, libdevel, doc, debug, ...), a programming-language
            ecosystem (python, perl, rust, ...), a desktop (gnome, kde, ...) or
            a catch-all (utils, misc) are left out.

One-line corpora (short texts: titles, summaries, definitions), for issue 28:

  synopses  Software one-liners: the short description (synopsis) of each
            package of the same bookworm indexes, the same sections and the
            same one package per source package as `debian`, without the
            long description ("Synchronize IMAP mailboxes", mail).
  glosses   One-line definitions: the gloss of each WordNet noun and verb
            synset, without its lemmas and example sentences ("a small cube
            of artificial ice", noun.artifact), labelled like `wordnet`.
  pkgkinds  A reproduction of issue 28's failure case, not a topical corpus: the
            synopses of every binary package (not one per source) of the 12 largest
            sections, libs, libdevel, python, doc, perl, devel, utils, haskell, net,
            rust, golang, javascript -- mostly kinds of package, told apart by a few
            frequent words ("development files", "Rust source code",
            "(documentation)") -- 250 documents each.
  apisums   API one-liners: the summary sentence of each documented function and
            class of SciPy, scikit-learn, SymPy and NetworkX (Debian bookworm's
            python3-* packages, parsed, not imported: "Return a Hamming window.",
            scipy.signal), labelled by the public subpackage that defines it
            (scipy.signal, sklearn.cluster, sympy.polys, networkx.algorithms,
            ...; catch-alls such as utils, base and top-level modules left out).

Inputs come through apt: `apt-get download` of pinned package versions (apt checks
their hashes against the signed archive index), and for `debian` the bookworm main
indexes, fetched with a private apt state (own sources.list and lists directory) into
the cache. Everything downloaded is kept in the cache (default $MINEMBED_CACHE/corpora-src
or ~/.cache/minembed/corpora-src), so later runs use the same inputs and write the same
bytes; --refresh fetches the indexes again (bookworm's point releases change them).

Every corpus is cleaned the same way (control characters removed, whitespace
collapsed), drops near-empty documents and exact duplicates (a text found under two
labels is dropped altogether), keeps labels with at least MIN_PER_LABEL documents, caps
each label at MAX_SHARE of the corpus and the corpus at MAX_DOCS documents. Which
documents are kept, and their order, come from a hash of the text: no random generator,
so the result does not depend on the Python version.
"""
import argparse
import collections
import gzip
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import unicodedata

MIN_CHARS = 20          # shorter documents are dropped
MIN_PER_LABEL = 30      # labels with fewer documents are dropped
MAX_SHARE = 0.30        # no label is more than this share of a corpus
MAX_DOCS = 20_000       # the most documents a corpus may have (see each corpus's own cap)
SEED = "minembed-corpora-1"   # mixed into the hash that orders documents

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PINNED = {   # the package versions the corpora are built from (bookworm)
    "wordnet-base": "1:3.0-37",
    "fortunes": "1:1.99.1-7.3",
    "fortunes-min": "1:1.99.1-7.3",
    "python3-scipy": "1.10.1-2",
    "python3-sklearn": "1.2.1+dfsg-1",
    "python3-sympy": "1.11.1-1",
    "python3-networkx": "2.8.8-1",
}


# --- cleaning and selection, shared by all corpora -------------------------------------

_OVERSTRIKE = re.compile(r".\x08")     # "_\bx": old terminal underlining/bold


def clean(text):
    """One line of plain text: NFC, no overstrikes or control characters, single spaces."""
    text = unicodedata.normalize("NFC", _OVERSTRIKE.sub("", text))
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    return " ".join(text.split())


def stable_key(text):
    """A pseudo-random but fixed position for a text: sha256 of SEED and the text."""
    return hashlib.sha256(f"{SEED}\n{text}".encode("utf-8")).hexdigest()


def deduplicate(docs):
    """Drop exact duplicates; a text seen under more than one label is dropped entirely."""
    labels_of = collections.defaultdict(set)
    for text, label in docs:
        labels_of[text].add(label)
    return sorted((text, next(iter(ls))) for text, ls in labels_of.items() if len(ls) == 1)


def label_cap(counts, max_docs, max_share):
    """The largest per-label cap c such that the corpus (each label min(n, c) documents)
    has at most max_docs documents and no label is more than max_share of it."""
    for c in range(max(counts.values()), 0, -1):
        total = sum(min(n, c) for n in counts.values())
        if total <= max_docs and c <= max_share * total:
            return c
    raise ValueError("no cap satisfies the limits")


def finish(docs, max_docs=MAX_DOCS, min_per_label=MIN_PER_LABEL, max_share=MAX_SHARE):
    """Clean, filter, deduplicate, cap and shuffle (text, label) pairs into the final corpus."""
    docs = [(clean(t), label) for t, label in docs]
    docs = deduplicate([(t, label) for t, label in docs if len(t) >= MIN_CHARS])
    by_label = collections.defaultdict(list)
    for text, label in docs:
        by_label[label].append(text)
    by_label = {lab: ts for lab, ts in by_label.items() if len(ts) >= min_per_label}
    cap = label_cap({lab: len(ts) for lab, ts in by_label.items()}, max_docs, max_share)
    kept = []
    for label, texts in sorted(by_label.items()):
        kept += [(t, label) for t in sorted(texts, key=stable_key)[:cap]]
    return sorted(kept, key=lambda d: stable_key(d[0]))


# --- getting the inputs through apt ----------------------------------------------------

def apt_options(cache):
    """apt-get options for a private apt state in the cache: our own sources.list and
    lists directory, English descriptions, no writes to the system's package cache."""
    return ["-o", f"Dir::Etc::SourceList={os.path.join(cache, 'sources.list')}",
            "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={os.path.join(cache, 'lists')}",
            "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
            "-o", "APT::Architecture=amd64", "-o", "APT::Architectures=amd64",
            "-o", "Acquire::Languages=en", "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1"]


def apt_update(cache, refresh=False):
    """Fetch the bookworm main indexes into CACHE/lists (once, or again with refresh)."""
    lists = os.path.join(cache, "lists")
    if os.path.isdir(lists) and not refresh and _index_files(lists, "Packages"):
        return lists
    os.makedirs(os.path.join(lists, "partial"), exist_ok=True)
    with open(os.path.join(cache, "sources.list"), "w") as f:
        f.write(f"deb [signed-by={KEYRING}] {MIRROR} {SUITE} main\n")
    subprocess.run(["apt-get", "update", "-q"] + apt_options(cache), check=True)
    return lists


def _index_files(lists, kind):
    return sorted(n for n in os.listdir(lists)
                  if f"_dists_{SUITE}_main_" in n and re.search(rf"_{kind}(\.\w+)?$", n))


def read_index(lists, kind):
    """The text of an index file (Packages or Translation-en), whatever apt compressed it with."""
    names = _index_files(lists, kind)
    if not names:
        raise SystemExit(f"no {kind} index in {lists}: run with --refresh")
    out = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", os.path.join(lists, names[0])],
                         check=True, capture_output=True)
    return out.stdout.decode("utf-8")


def release(lists):
    """'Debian 12.15 of <date>': which state of the archive the indexes in `lists` are."""
    names = sorted(n for n in os.listdir(lists) if n.endswith(f"_dists_{SUITE}_InRelease"))
    with open(os.path.join(lists, names[0]), encoding="utf-8") as f:
        fields = dict(re.findall(r"^(Version|Date): (.*)$", f.read(), re.M))
    return f"Debian {fields.get('Version', '?')} of {fields.get('Date', '?')}"


def unpacked(package, cache):
    """The directory a pinned package is unpacked into (downloaded and unpacked once)."""
    root = os.path.join(cache, "unpacked", f"{package}_{PINNED[package].replace(':', '_')}")
    if os.path.isdir(root):
        return root
    apt_update(cache)
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    subprocess.run(["apt-get", "download", "-q", f"{package}={PINNED[package]}"] +
                   apt_options(cache), check=True, cwd=debs)
    version = PINNED[package].replace(":", "%3a")
    deb = next(os.path.join(debs, f"{package}_{version}_{arch}.deb") for arch in ("all", "amd64")
               if os.path.isfile(os.path.join(debs, f"{package}_{version}_{arch}.deb")))
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
    os.rename(tmp, root)
    return root


# --- wordnet ---------------------------------------------------------------------------

def lexnames(root):
    """{file number: lexicographer file name}, read from the lexnames(5WN) man page."""
    with gzip.open(os.path.join(root, "usr/share/man/man5/lexnames.5WN.gz"), "rt") as f:
        return {int(m[1]): m[2] for m in re.finditer(r"^(\d\d)\t(\w+\.\w+)", f.read(), re.M)}


def synsets(path):
    """(lex file number, lemmas, gloss) for each synset line of a WordNet data.* file."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):       # the licence header
                continue
            fields, _, gloss = line.partition(" | ")
            fields = fields.split()
            n_words = int(fields[3], 16)
            lemmas = [w.replace("_", " ") for w in fields[4:4 + 2 * n_words:2]]
            yield int(fields[1]), lemmas, gloss.strip()


def wordnet(cache):
    root = unpacked("wordnet-base", cache)
    names = lexnames(root)
    docs = []
    for pos in ("noun", "verb"):
        for lexfile, lemmas, gloss in synsets(os.path.join(root, "usr/share/wordnet",
                                                           f"data.{pos}")):
            label = names[lexfile]
            if label != "noun.Tops":
                docs.append((f"{', '.join(lemmas)}: {gloss}", label))
    return finish(docs, max_docs=15_000)


def gloss_only(gloss):
    """The definition part of a WordNet gloss: the text before its first quoted example."""
    return re.split(r';\s*"', gloss)[0].strip().rstrip(";").strip()


def glosses(cache):
    root = unpacked("wordnet-base", cache)
    names = lexnames(root)
    docs = []
    for pos in ("noun", "verb"):
        data = os.path.join(root, "usr/share/wordnet", f"data.{pos}")
        for lexfile, lemmas, gloss in synsets(data):
            if names[lexfile] != "noun.Tops":
                docs.append((gloss_only(gloss), names[lexfile]))
    return finish(docs, max_docs=15_000)


# --- apisums --------------------------------------------------------------------------

API_PACKAGES = ("python3-scipy", "python3-sklearn", "python3-sympy", "python3-networkx")
API_CATCHALLS = {"utils", "utilities", "base", "external", "externals", "testing", "conftest",
                 "misc", "strategies", "compat", "version", "setup"}
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)`'\]])\.(\s|$)")


def summary_sentence(docstring):
    """The first sentence of a docstring's first paragraph, as one line."""
    first = " ".join(docstring.strip().split("\n\n")[0].split())
    m = _SENTENCE_END.search(first)
    return first[:m.start() + 1] if m else first


def api_label(parts):
    """library.subpackage of a module path (['scipy', 'signal', '_windows']), or None for
    private, test and catch-all modules and for modules at the top of a library."""
    if len(parts) < 2 or parts[1].startswith("_") or parts[1] in API_CATCHALLS:
        return None
    if any(p in ("tests", "testing", "benchmarks") or p.startswith("test") for p in parts):
        return None
    return f"{parts[0]}.{parts[1]}"


def apisums(cache):
    import ast
    docs = []
    for package in API_PACKAGES:
        base = os.path.join(unpacked(package, cache), "usr/lib/python3/dist-packages")
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(folder, name), base)[:-3].split(os.sep)
                label = api_label(parts[:-1] if name == "__init__.py" else parts)
                if label is None:
                    continue
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        doc = ast.get_docstring(node)
                        if doc and doc.strip():
                            docs.append((summary_sentence(doc), label))
    return finish(docs)


# --- fortunes --------------------------------------------------------------------------

FORTUNE_TOPICS = {   # fortune file -> label; files named after a form or a source are left out
    "art": "art", "computers": "computers", "debian": "debian", "drugs": "drugs",
    "education": "education", "ethnic": "ethnic", "food": "food", "kids": "kids",
    "law": "law", "linux": "linux", "linuxcookie": "linux", "literature": "literature",
    "love": "love", "medicine": "medicine", "men-women": "men-women", "news": "news",
    "people": "people", "perl": "perl", "pets": "pets", "politics": "politics",
    "science": "science", "sports": "sports", "startrek": "startrek", "work": "work",
}


def cookies(path):
    """The fortunes of a fortune file: texts separated by lines holding only '%'."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [c for c in re.split(r"^%$", f.read(), flags=re.M) if c.strip()]


def fortunes(cache):
    docs = []
    for package in ("fortunes", "fortunes-min"):
        folder = os.path.join(unpacked(package, cache), "usr/share/games/fortunes")
        for name in sorted(os.listdir(folder)):
            if name in FORTUNE_TOPICS:
                docs += [(c, FORTUNE_TOPICS[name]) for c in cookies(os.path.join(folder, name))]
    return finish(docs)


# --- debian ----------------------------------------------------------------------------

DEBIAN_SECTIONS = {   # Debian sections that name what the software is about
    "admin", "comm", "database", "devel", "editors", "education", "electronics", "fonts",
    "games", "graphics", "hamradio", "httpd", "interpreters", "kernel", "localization",
    "mail", "math", "net", "news", "otherosfs", "science", "shells", "sound", "tex",
    "text", "vcs", "video", "web",
}


def stanzas(text):
    """The fields of each stanza of a deb822 index (continuation lines kept, joined by newlines)."""
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def description_text(description):
    """"Short description. Long description" as one line (' .' lines are paragraph breaks)."""
    short, _, long = description.partition("\n")
    lines = [line.strip() for line in long.split("\n")]
    return short.strip() + ". " + " ".join(line for line in lines if line != ".")


def _one_per_source(cache, text_of):
    """(text_of(Description-en), section) of one package per source package in DEBIAN_SECTIONS."""
    lists = apt_update(cache)
    descriptions = {(s["Package"], s["Description-md5"]): s["Description-en"]
                    for s in stanzas(read_index(lists, "Translation-en"))}
    by_source = collections.defaultdict(list)
    for s in stanzas(read_index(lists, "Packages")):
        text = descriptions.get((s["Package"], s.get("Description-md5")))
        if text and s.get("Section") in DEBIAN_SECTIONS:
            source = s.get("Source", s["Package"]).split()[0]
            by_source[source].append((s["Package"], s["Section"], text_of(text)))
    docs = []
    # the package named like its source, else the shortest name
    for source, packages in sorted(by_source.items()):
        name, section, text = min(packages, key=lambda p: (p[0] != source, len(p[0]), p[0]))
        docs.append((text, section))
    return docs


def debian(cache):
    return finish(_one_per_source(cache, description_text), max_docs=10_000)


def pkgkinds(cache):
    lists = apt_update(cache)
    descriptions = {(s["Package"], s["Description-md5"]): s["Description-en"]
                    for s in stanzas(read_index(lists, "Translation-en"))}
    docs = []
    for s in stanzas(read_index(lists, "Packages")):
        text = descriptions.get((s["Package"], s.get("Description-md5")))
        if text and s.get("Section"):
            docs.append((text.partition("\n")[0].strip(), s["Section"]))
    sizes = collections.Counter(section for _, section in docs)
    largest = {section for section, _ in sorted(sizes.items(), key=lambda x: (-x[1], x[0]))[:12]}
    return finish([d for d in docs if d[1] in largest], max_docs=3_000)


def synopses(cache):
    """The short description alone (the first line of Description-en)."""
    return finish(_one_per_source(cache, lambda d: d.partition("\n")[0].strip()), max_docs=20_000)


# --- writing ---------------------------------------------------------------------------

CORPORA = {"wordnet": wordnet, "fortunes": fortunes, "debian": debian, "synopses": synopses,
           "glosses": glosses, "apisums": apisums, "pkgkinds": pkgkinds}


def write_jsonl_gz(path, docs):
    """JSON lines, gzip with mtime 0 and no file name: the same documents give the same bytes."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        for text, label in docs:
            gz.write((json.dumps({"text": text, "label": label}, ensure_ascii=False)
                      + "\n").encode("utf-8"))
    os.replace(tmp, path)


def stats(docs):
    counts = collections.Counter(label for _, label in docs)
    return {"documents": len(docs), "labels": len(counts),
            "min_per_label": min(counts.values()),
            "median_per_label": statistics.median(counts.values()),
            "max_per_label": max(counts.values()),
            "median_chars": statistics.median(len(t) for t, _ in docs),
            "median_words": statistics.median(len(t.split()) for t, _ in docs)}


def main(argv=None):
    default_cache = os.path.join(os.environ.get("MINEMBED_CACHE") or
                                 os.path.join(os.path.expanduser("~"), ".cache", "minembed"),
                                 "corpora-src")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="where NAME.jsonl.gz are written")
    p.add_argument("--only", nargs="+", choices=sorted(CORPORA), help="build only these corpora")
    p.add_argument("--cache", default=default_cache, help=f"downloads (default {default_cache})")
    p.add_argument("--refresh", action="store_true", help="fetch the Debian indexes again")
    p.add_argument("--labels", action="store_true", help="also print the documents per label")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    os.makedirs(args.cache, exist_ok=True)
    cache = os.path.abspath(args.cache)
    if args.refresh:
        apt_update(cache, refresh=True)
    for name in args.only or sorted(CORPORA):
        docs = CORPORA[name](cache)
        path = os.path.join(args.out_dir, f"{name}.jsonl.gz")
        write_jsonl_gz(path, docs)
        s = stats(docs)
        print(f"{name}: {s['documents']} documents, {s['labels']} labels, per label "
              f"min {s['min_per_label']} median {s['median_per_label']:g} "
              f"max {s['max_per_label']}, "
              f"median {s['median_chars']:g} chars, {s['median_words']:g} words -> {path}")
        if name in ("debian", "synopses", "pkgkinds"):
            print(f"  from the indexes of {release(os.path.join(cache, 'lists'))}")
        if args.labels:
            counts = collections.Counter(label for _, label in docs)
            print("  " + ", ".join(f"{lab} {n}" for lab, n in sorted(counts.items())))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
