"""MinHash deduplication of the whole standard library (tests included): fast path vs datasketch loop.

    python benchmarks/dedup.py [--skip-baseline] [--num-perm 128] [--threshold 0.8]

Both methods compute the same datasketch "affine32" signatures (SHA-1 of each 5-token shingle), feed
them to the same `datasketch.MinHashLSH` and verify candidates exactly, so their clusters must be
identical; the script checks that. Timings are end to end (shingling, hashing, LSH, verification).
A second table measures recall and false positives on planted near-duplicates of known Jaccard.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import warnings

import pandas as pd

from cookbook.data import corpus, dedup, synthetic


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished children (worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _run(texts, label, **kwargs):
    start, cpu = time.perf_counter(), _cpu()
    report = dedup.minhash(texts, **kwargs)
    seconds = time.perf_counter() - start
    return label, seconds, _cpu() - cpu, report


def quality(num_perm: int, threshold: float, n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Recall on planted pairs at Jaccard ≥ threshold; false positives among every pair of documents."""
    docs, planted = synthetic.near_duplicates(n, seed)
    report = dedup.minhash(docs, threshold=threshold, num_perm=num_perm, workers=1)
    cluster_of = {i: c for c, members in enumerate(report.clusters) for i in members}
    found = [cluster_of.get(i, -1) == cluster_of.get(j, -2) for i, j in zip(planted.i, planted.j, strict=True)]
    planted = planted.assign(found=found)
    above = planted[planted.jaccard >= threshold]
    below = planted[planted.jaccard < threshold]
    # Every pair the report puts together, judged against exact Jaccard of the shingle sets.
    sets = [dedup.shingles(d) for d in docs]
    together = [(a, b) for members in report.clusters for x, a in enumerate(members) for b in members[x + 1:]]
    wrong = sum(len(sets[a] & sets[b]) / len(sets[a] | sets[b]) < threshold for a, b in together)
    all_pairs = len(docs) * (len(docs) - 1) // 2
    return pd.DataFrame([
        {"measure": f"recall (planted pairs, Jaccard ≥ {threshold})", "value": above.found.mean(), "pairs": len(above)},
        {"measure": f"planted pairs below {threshold} reported", "value": below.found.mean(), "pairs": len(below)},
        {"measure": "false-positive share of reported pairs", "value": wrong / max(1, len(together)),
         "pairs": len(together)},
        {"measure": "false-positive rate over all pairs", "value": wrong / all_pairs, "pairs": all_pairs},
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-baseline", action="store_true", help="only time the fast path")
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stdlib test suite holds a few deliberately non-UTF-8 files
        ds = corpus.load(include_tests=True)
    texts = list(ds["text"])
    mb = sum(ds["bytes"]) / 1e6
    print(f"stdlib incl. tests: {len(texts)} files, {mb:.1f} MB; {os.cpu_count()} CPU cores; "
          f"{platform.processor() or platform.machine()}; load average before: {os.getloadavg()[0]:.1f}")
    common = dict(threshold=args.threshold, num_perm=args.num_perm)
    runs = [_run(texts, "numpy fast path (all cores)", **common),
            _run(texts, "numpy fast path (1 process)", workers=1, **common)]
    if not args.skip_baseline:
        runs.append(_run(texts, "datasketch MinHash.update loop", engine="datasketch", **common))
    reference = runs[-1][1]
    rows = [{"method": label, "seconds": round(s, 2), "cpu seconds": round(c, 2), "docs/s": round(len(texts) / s),
             "MB/s": round(mb / s, 2), "clusters": len(r.clusters), "removed": len(r.removed),
             "ratio vs last": round(reference / s, 2)}
            for label, s, c, r in runs]
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"load average after: {os.getloadavg()[0]:.1f}; cpu seconds count this process and its workers, so they "
          "stay comparable when other programs share the cores")
    clusters = {label: sorted(map(tuple, r.clusters)) for label, _, _, r in runs}
    identical = all(c == clusters[runs[0][0]] for c in clusters.values())
    print(f"identical clusters across methods: {identical}")
    if not identical:
        raise SystemExit("clusters differ between methods")
    print()
    print(quality(args.num_perm, args.threshold).to_string(index=False))


if __name__ == "__main__":
    main()
