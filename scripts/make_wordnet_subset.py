"""Build data/wordnet_supersenses.tsv, the BERT case study's text task, from Debian's WordNet 3.0.

Each row is one noun synset: its lexicographer file (the supersense, e.g. noun.animal) is the label and
its gloss (the definition, without the quoted examples) is the text. Ten supersenses, GLOSSES_PER_CLASS
glosses each, drawn with a fixed seed from the glosses of 3 to 30 words that occur only once in WordNet.

Deterministic: the same data.noun and arguments give a byte-identical file. Prints the SHA-256 to put in
lwkit/text.py (SUBSET_SHA256) and data/README.md.

    sudo apt-get install wordnet-base
    python scripts/make_wordnet_subset.py              # writes data/wordnet_supersenses.tsv
    python scripts/make_wordnet_subset.py --out X.tsv  # somewhere else (never overwrites without --force)
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

from lwkit.data import data_dir, sha256
from lwkit.text import CLASSES, LEXFILE_NUMBERS, SUBSET_FILE

WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")  # Debian package wordnet-base
GLOSSES_PER_CLASS = 300
MIN_WORDS, MAX_WORDS = 3, 30  # short glosses fit max_length 32-64 tokens
SEED = 1985  # the year WordNet was begun at Princeton; any fixed value would do
HEADER = "label\tsynset\tlemma\tgloss\n"


def parse_line(line: str) -> tuple[str, int, str, str] | None:
    """(synset offset, lexicographer file number, first lemma, definition) of one data.noun line, or None."""
    if line.startswith("  "):  # the licence header
        return None
    fields, _, gloss = line.partition(" | ")
    parts = fields.split()
    offset, lexfile, lemma = parts[0], int(parts[1]), parts[4].replace("_", " ")
    definition = gloss.split('; "')[0].strip().strip(";").strip()  # drop the quoted usage examples
    definition = " ".join(definition.split())  # one space between words, no tabs
    return offset, lexfile, lemma, definition


def build_rows(path: Path = WORDNET_NOUNS, *, per_class: int = GLOSSES_PER_CLASS, seed: int = SEED) -> list[str]:
    """TSV rows (without the header), grouped by class in CLASSES order, sorted by synset within a class."""
    parsed = [p for p in map(parse_line, path.read_text(encoding="utf-8").splitlines()) if p is not None]
    counts = Counter(p[3].lower() for p in parsed)  # a gloss shared by two synsets could carry two labels
    rows = []
    for name in CLASSES:
        number = LEXFILE_NUMBERS[name]
        pool = [p for p in parsed if p[1] == number and counts[p[3].lower()] == 1
                and MIN_WORDS <= len(p[3].split()) <= MAX_WORDS]
        if len(pool) < per_class:
            raise ValueError(f"per_class must be at most {len(pool)} for {name}, got {per_class}")
        chosen = sorted(random.Random(f"{seed}-{name}").sample(pool, per_class))
        rows += [f"{name}\t{offset}\t{lemma}\t{definition}\n" for offset, _, lemma, definition in chosen]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", default=str(WORDNET_NOUNS), help="WordNet 3.0 data.noun")
    parser.add_argument("--out", default=str(data_dir() / SUBSET_FILE))
    parser.add_argument("--per-class", type=int, default=GLOSSES_PER_CLASS)
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args()
    source = Path(args.wordnet)
    if not source.exists():
        raise SystemExit(f"{source} not found: install Debian's WordNet 3.0 with `sudo apt-get install wordnet-base`")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists; pass --force to overwrite it, or --out to write elsewhere")
    rows = build_rows(source, per_class=args.per_class)
    out.write_text(HEADER + "".join(rows), encoding="utf-8", newline="\n")
    print(f"wrote {out}: {len(rows)} glosses, {out.stat().st_size} bytes, sha256 {sha256(out)}")


if __name__ == "__main__":
    main()
