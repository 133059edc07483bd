"""Node counting throughput, measured side by side in one run against the seed's algorithm and `wc -w`.

    python bench/node_throughput.py [--size-mb 200] [--workers N] [--corpus english,diacritics]

Generates two deterministic corpora once (cached under bench/.corpus/): English-like ASCII text, and
text with Czech/Polish-style diacritics and Unicode punctuation. Every measurement runs in a fresh
process, so its peak RSS is its own. Prints MB/s, peak RSS and the ratios the node's goals are stated
in (docs/node.md): one process at least 2.0x the seed's algorithm for both tokenizers on both
corpora (per CPU-second); all cores (2 here) at least 1.7x one process (wall clock); peak RSS under
200 MB on the 200 MB file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import shutil
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from node.counting import available_cpus

CORPUS_DIR = Path(__file__).resolve().parent / ".corpus"
GENERATOR_VERSION = 2
MB = 1_000_000

# --- corpora -------------------------------------------------------------------------------------

_ENGLISH_ONSETS = [
    "",
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "w",
    "th",
    "st",
    "br",
    "ch",
]
_ENGLISH_VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "y"]
_ENGLISH_CODAS = ["", "", "n", "r", "s", "t", "d", "ng", "ck", "ll", "st", "rd"]
_SLAVIC_ONSETS = [
    "",
    "b",
    "c",
    "č",
    "d",
    "ď",
    "h",
    "ch",
    "k",
    "l",
    "ł",
    "m",
    "n",
    "ň",
    "p",
    "ř",
    "s",
    "š",
    "ś",
    "t",
]
_SLAVIC_ONSETS += ["ť", "v", "w", "z", "ž", "ż", "ź", "st", "pr", "sz", "cz", "rz", "dz"]
_SLAVIC_VOWELS = ["a", "á", "ą", "e", "é", "ě", "ę", "i", "í", "o", "ó", "u", "ú", "ů", "y", "ý"]
_SLAVIC_CODAS = ["", "", "", "k", "l", "m", "n", "ń", "j", "c", "ć", "ch", "st", "ž"]


def _vocabulary(
    rng: random.Random, onsets: list[str], vowels: list[str], codas: list[str], size: int
) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        words.add(
            "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables))
        )
    # Short words first, then shuffled: the most frequent words (rank 1, 2, ...) are short, as in real text.
    ordered = sorted(words)
    rng.shuffle(ordered)
    return sorted(ordered, key=len)


def _surface_forms(word: str, opening: list[str], closing: list[str]) -> list[tuple[str, float]]:
    """Forms a word takes in running text, with relative weights (capitals, punctuation, quotes)."""
    forms = [
        (word, 70.0),
        (word.capitalize(), 8.0),
        (word + ",", 8.0),
        (word + ".", 6.0),
        (word.upper(), 0.5),
    ]
    forms += [(mark + word, 1.0) for mark in opening] + [(word + mark, 1.0) for mark in closing]
    return forms


def _generate(kind: str, size_bytes: int, seed: int = 20261122) -> bytes:
    """A deterministic corpus of at least `size_bytes` bytes."""
    rng = random.Random(f"{seed}-{kind}")
    if kind == "english":
        vocabulary = _vocabulary(rng, _ENGLISH_ONSETS, _ENGLISH_VOWELS, _ENGLISH_CODAS, 30_000)
        opening, closing = ['"', "("], ['"', ")", "'s", "!", "?", ";", ":", "--"]
        separators = [" "] * 14 + ["\n"]
    else:
        vocabulary = _vocabulary(rng, _SLAVIC_ONSETS, _SLAVIC_VOWELS, _SLAVIC_CODAS, 40_000)
        opening, closing = ["„", "‚", "«", "("], ["“", "‘", "»", ")", "…", "!", "?", " –", " —"]
        separators = [" "] * 13 + ["\n", "\u00a0"]
    forms: list[str] = []
    weights: list[float] = []
    for rank, word in enumerate(vocabulary, start=1):
        for form, weight in _surface_forms(word, opening, closing):
            forms.append(form)
            weights.append(weight / rank)  # Zipf-like: the rank-th word is 1/rank as common
    cumulative: list[float] = []
    total = 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    blocks: list[bytes] = []
    produced = 0
    while produced < size_bytes:
        tokens = rng.choices(forms, cum_weights=cumulative, k=200_000)
        gaps = rng.choices(separators, k=len(tokens))
        block = "".join([token + gap for token, gap in zip(tokens, gaps, strict=True)]).encode("utf-8")
        blocks.append(block)
        produced += len(block)
    return b"".join(blocks)


def _write_corpus(kind: str, size_mb: int, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(_generate(kind, size_mb * MB))
    temporary.replace(path)


def corpus(kind: str, size_mb: int) -> Path:
    """The cached corpus file, generated on first use in a child process (see _own_peak_rss_mb)."""
    path = CORPUS_DIR / f"{kind}-{size_mb}mb-v{GENERATOR_VERSION}.txt"
    if not path.exists():
        CORPUS_DIR.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        command = [
            sys.executable,
            __file__,
            "--generate",
            kind,
            "--size-mb",
            str(size_mb),
            "--file",
            str(path),
        ]
        subprocess.run(command, check=True)
        print(f"generated {path.name} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return path


# --- measurements (each in its own process) ---------------------------------------------------------


def _seed_algorithm(path: Path) -> int:
    """The tutorial's task script: read everything, split, strip ASCII punctuation, Counter."""
    with path.open(encoding="utf-8") as stream:
        words = [word.strip(string.punctuation) for word in stream.read().split()]
    return len(collections.Counter(words))


def _ours(path: Path, tokenizer: str, workers: int) -> int:
    from node.counting import count_file
    from node.tokenizers import check_tokenizer

    return count_file(path, check_tokenizer(tokenizer), workers=workers).distinct


def _own_peak_rss_mb() -> float:
    """This process's own high-water RSS (VmHWM); ru_maxrss would include what a parent used before exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def _measure(kind: str, path: Path, tokenizer: str, workers: int) -> None:
    started = time.perf_counter()
    own_started = resource.getrusage(resource.RUSAGE_SELF)
    distinct = _seed_algorithm(path) if kind == "seed" else _ours(path, tokenizer, workers)
    seconds = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # User and system CPU apart: system time here is mostly page faults, which cost the seed (it
    # holds the whole file's words) far more than us, and whose price depends on the machine.
    user_seconds = own.ru_utime - own_started.ru_utime + children.ru_utime
    system_seconds = own.ru_stime - own_started.ru_stime + children.ru_stime
    # Workers start while this process is still small, so their ru_maxrss is essentially their own.
    peak = max(_own_peak_rss_mb(), children.ru_maxrss * 1024 / MB)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "user_seconds": user_seconds,
                "system_seconds": system_seconds,
                "peak_rss_mb": peak,
                "distinct": distinct,
            }
        )
    )


def _run_measurement(
    kind: str, path: Path, repeat: int, tokenizer: str = "words", workers: int = 1
) -> Measured:
    """Best wall and CPU times and largest peak RSS over `repeat` fresh processes."""
    command = [sys.executable, __file__, "--measure", kind, "--file", str(path)]
    command += ["--tokenizer", tokenizer, "--workers", str(workers)]
    runs = [
        json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        for _ in range(repeat)
    ]
    return Measured(
        seconds=min(run["seconds"] for run in runs),
        cpu_seconds=min(run["user_seconds"] + run["system_seconds"] for run in runs),
        user_seconds=min(run["user_seconds"] for run in runs),
        peak_rss_mb=max(run["peak_rss_mb"] for run in runs),
    )


def _wc_seconds(path: Path, repeat: int) -> float:
    wc = shutil.which("wc")
    if wc is None:
        raise SystemExit("wc not found on PATH: it is the C-speed reference; install coreutils")
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            [wc, "-w", str(path)], check=True, capture_output=True, env={**os.environ, "LC_ALL": "C"}
        )
        best = min(best, time.perf_counter() - started)
    return best


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu_seconds: float  # user + system, all processes; on a busy shared machine, the steadier figure
    user_seconds: float  # user CPU only: leaves out page faults, whose price varies by machine
    peak_rss_mb: float


def _report(kind: str, path: Path, workers: int, repeat: int) -> list[tuple[str, bool]]:
    size_mb = path.stat().st_size / MB
    seed = _run_measurement("seed", path, repeat)
    single = {name: _run_measurement("ours", path, repeat, name, 1) for name in ("words", "tutorial")}
    multi = {name: _run_measurement("ours", path, repeat, name, workers) for name in ("words", "tutorial")}
    wc = _wc_seconds(path, repeat)

    rows = [("seed algorithm (read all, split, strip, Counter)", seed)]
    rows += [(f"node, {name}, 1 process", measured) for name, measured in single.items()]
    rows += [(f"node, {name}, {workers} processes", measured) for name, measured in multi.items()]
    print(f"\n## {kind}: {path.name} ({size_mb:.0f} MB)")
    print(
        f"{'measurement':<50} {'MB/s':>8} {'MB/CPU-s':>9} {'user s':>7} {'sys s':>6} {'peak RSS MB':>12}"
        "  (RSS: largest process)"
    )
    for name, measured in rows:
        system_seconds = measured.cpu_seconds - measured.user_seconds
        print(
            f"{name:<50} {size_mb / measured.seconds:>8.1f} {size_mb / measured.cpu_seconds:>9.1f}"
            f" {measured.user_seconds:>7.2f} {system_seconds:>6.2f} {measured.peak_rss_mb:>12.0f}"
        )
    print(f"{'wc -w (LC_ALL=C), the C-speed reference':<50} {size_mb / wc:>8.1f} {'-':>9}")

    goals: list[tuple[str, bool]] = []
    for name in ("words", "tutorial"):
        # Judged per CPU-second, user + system: on a shared machine wall-clock time also counts the
        # time other jobs held the CPU. Printed alongside: wall clock, and user CPU alone, which
        # leaves out the seed's page faults (their price differs from machine to machine; see
        # docs/node.md), so it is the lower bound of what another machine would show.
        speedup = seed.seconds / single[name].seconds
        by_cpu = seed.cpu_seconds / single[name].cpu_seconds
        by_user = seed.user_seconds / single[name].user_seconds
        goals.append(
            (
                f"{kind}, {name}: 1 process / seed = {by_cpu:.2f}x per CPU-second"
                f" (wall clock: {speedup:.2f}x; user CPU only: {by_user:.2f}x; goal >= 2.0x)",
                by_cpu >= 2.0,
            )
        )
        scaling = single[name].seconds / multi[name].seconds
        goals.append(
            (f"{kind}, {name}: {workers} processes / 1 = {scaling:.2f}x (goal >= 1.7x)", scaling >= 1.7)
        )
        rss = max(single[name].peak_rss_mb, multi[name].peak_rss_mb)
        goals.append((f"{kind}, {name}: peak RSS {rss:.0f} MB (goal < 200 MB)", rss < 200))
    print(
        f"(seed peak RSS {seed.peak_rss_mb:.0f} MB; wc -w is {single['words'].seconds / wc:.1f}x node words)"
    )
    return goals


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=200, help="corpus size in MB (default 200)")
    parser.add_argument(
        "--workers",
        type=int,
        default=available_cpus(),
        help="processes for the all-cores rows (default: all)",
    )
    parser.add_argument("--corpus", default="english,diacritics", help="comma-separated: english, diacritics")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement; the best time counts (default 3)"
    )
    parser.add_argument("--measure", choices=("seed", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--generate", choices=("english", "diacritics"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", default="words", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        _write_corpus(args.generate, args.size_mb, args.file)
        return 0
    if args.measure:
        _measure(args.measure, args.file, args.tokenizer, args.workers)
        return 0
    if args.size_mb < 1 or args.workers < 1:
        parser.error("--size-mb and --workers must be at least 1")
    kinds = [kind.strip() for kind in args.corpus.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in ("english", "diacritics")]
    if unknown:
        parser.error(f"unknown corpus {unknown[0]!r}: choose english and/or diacritics")
    print(f"node throughput: {args.size_mb} MB corpora, {args.workers} workers, {os.cpu_count()} CPUs here")
    goals: list[tuple[str, bool]] = []
    for kind in kinds:
        goals += _report(kind, corpus(kind, args.size_mb), args.workers, max(1, args.repeat))
    print("\n## goals")
    for text, met in goals:
        print(f"[{'met ' if met else 'MISS'}] {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
