"""Mutation check: does some test fail when the package is wrong in a realistic way?

Each mutation is a small source edit (a swapped argument, an off-by-one, a biased estimator). For
each, the repository is copied to a temporary directory, the edit applied there, and pytest run on
the tests that should see it (``--full``: all of tests/) with that copy imported instead of the
installed package. A mutation no test catches is reported as SURVIVED and the script exits 1.

    python scripts/mutate.py                 # every mutation, its own tests
    python scripts/mutate.py --full          # every mutation against the whole of tests/
    python scripts/mutate.py -k gate --count # some mutations, counting every failing test

The copy gets PYTHONPATH at its root; before testing, the script checks that ``spiral_fast``, its kernels and
the mutated module are imported from the copy, and the baseline (unmutated copy) must pass.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # file of the repository, relative to its root
    old: str  # exact source text...
    new: str  # ...replaced by this
    tests: tuple  # pytest arguments that should catch it
    occurrence: int = 0  # which occurrence of ``old`` to replace (0: the first)
    why: str = ""


STEP_TESTS = ("tests/test_step_oracle.py", "tests/test_step.py", "tests/test_advantages.py")

MUTATIONS = [
    Mutation(
        "swap-role-coefficients-and-normalisers",
        "spiral_fast/policy_step/losses.py",
        "config.trace_coef, counts.trace_tokens, counts.trace_seqs),\n"
        '        ("agg", slice(split, None), slice(seqs.num_trace, None), config.agg_coef, counts.agg_tokens, '
        "counts.agg_seqs),",
        "config.agg_coef, counts.agg_tokens, counts.agg_seqs),\n"
        '        ("agg", slice(split, None), slice(seqs.num_trace, None), config.trace_coef, counts.trace_tokens, '
        "counts.trace_seqs),",
        ("tests/test_step_oracle.py", "tests/test_step.py"),
        why="the trace role weighed and normalised as the aggregator (shared by step and step_reference)",
    ),
    Mutation(
        "biased-std",
        "spiral_fast/algorithm/reference.py",
        "denom = (sq / (n - 1).clamp_min(1)).sqrt() + eps",
        "denom = (sq / n.clamp_min(1)).sqrt() + eps",
        STEP_TESTS,
        why="std with 1/n instead of 1/(n-1) in group_advantage",
    ),
    Mutation(
        "vocab-chunk-first-column-loses-gradient",
        "spiral_fast/ops/logprobs/chunked.py",
        "inside = (local >= 0) & (local < z.shape[1])",
        "inside = (local > 0) & (local < z.shape[1])",
        ("tests/test_logprobs_boundaries.py", "tests/test_logprobs.py"),
        occurrence=1,
        why="a target in a vocabulary chunk's first column gets no one-hot gradient (torch backend)",
    ),
    Mutation(
        "triton-block-first-column-loses-gradient",
        "spiral_fast/kernels/logprobs.py",
        "offs_v[None, :] == tgt[:, None], temperature",
        "(offs_v[None, :] == tgt[:, None]) & (offs_v[None, :] % BLOCK_V != 0), temperature",
        ("tests/test_logprobs_boundaries.py", "tests/test_logprobs_triton.py"),
        why="the Triton backward drops the one-hot gradient of a target in a vocabulary block's first column",
    ),
    # the paper's options (issue 8)
    Mutation(
        "agg-baseline-set-uses-the-problem",
        "spiral_fast/algorithm/reference.py",
        "agg = group_advantage(rewards, agg_set, num_sets, **kw)",
        "agg = group_advantage(rewards, set_problem[agg_set], num_problems, **kw)",
        STEP_TESTS,
        why='agg_baseline="set" silently compares a response with its whole problem',
    ),
    Mutation(
        "length-gate-off-by-one",
        "spiral_fast/policy_step/advantages.py",
        "hit = (torch.tensor(lengths, dtype=torch.int64) > limit) & (adv > 0)",
        "hit = (torch.tensor(lengths, dtype=torch.int64) >= limit) & (adv > 0)",
        ("tests/test_step_oracle.py", "tests/test_step.py"),
        why="a response of exactly L tokens is gated (the gate is for more than L)",
    ),
    Mutation(
        "clip-none-still-clips",
        "spiral_fast/ops/policy_loss/op.py",
        "bounds = (1.0, math.inf) if clip is None else tuple(clip)",
        "bounds = (0.2, 0.28) if clip is None else tuple(clip)",
        ("tests/test_step_oracle.py", "tests/test_policy_loss.py"),
        why="clip=None falls back to the default PPO clip in the fused loss (step's path)",
    ),
    Mutation(
        "tree-attention-future-token-leak",
        "spiral_fast/ops/tree_attention/layout.py",
        ".tril(c - n)",
        ".tril(c - n + 1)",
        ("tests/test_tree_attention.py", "tests/test_models.py"),
        why="a non-root segment's token sees the next token of its own segment",
    ),
    Mutation(
        "fused-lora-unscaled-db",
        "spiral_fast/ops/lora_linear.py",
        "dbb = (dy2.t() @ xa).mul_(ctx.scaling)",
        "dbb = dy2.t() @ xa",
        ("tests/test_lora_linear.py", "tests/test_lora.py"),
        why="the fused LoRA layer forgets the scale in lora_B's gradient",
    ),
]


def copy_repo(dest: Path) -> None:
    """Tracked and untracked-not-ignored files and the built extension."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for ext in (ROOT / "spiral_fast" / "packing").glob("_native*"):
        shutil.copy2(ext, dest / "spiral_fast" / "packing" / ext.name)


def apply(dest: Path, m: Mutation) -> None:
    path = dest / m.path
    text = path.read_text()
    starts = [i.start() for i in re.finditer(re.escape(m.old), text)]
    if len(starts) <= m.occurrence:
        raise SystemExit(
            f"{m.name}: {m.path} holds {len(starts)} occurrence(s) of the text to mutate, "
            f"needs occurrence {m.occurrence}: update the mutation to the code"
        )
    i = starts[m.occurrence]
    path.write_text(text[:i] + m.new + text[i + len(m.old) :])


def environment(dest: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(dest), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("TRITON_INTERPRET", "1")
    return env


def check_imports(dest: Path, m: Mutation | None) -> None:
    """spiral_fast, spiral_fast.kernels and the mutated module must come from the copy."""
    modules = ["spiral_fast", "spiral_fast.kernels"]
    if m is not None and m.path.endswith(".py"):
        modules.append(m.path[:-3].replace("/", ".").removesuffix(".__init__"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    print(importlib.import_module(name).__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd="/",
        env=environment(dest),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name, file in zip(modules, out):
        if not Path(file).resolve().is_relative_to(dest.resolve()):
            raise SystemExit(f"{name} was imported from {file}, not from the copy {dest}")


def run_tests(dest: Path, tests, *, stop_first: bool) -> tuple[int, str, float]:
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    if stop_first:
        args.append("-x")
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=dest, env=environment(dest), capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    failed = [ln.split(" ")[1] for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    summary = lines[-1] if lines else proc.stderr.strip()[-200:]
    detail = f"{summary}; first: {failed[0]}" if failed else summary
    return proc.returncode, detail, time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="run all of tests/ for every mutation")
    parser.add_argument("--count", action="store_true", help="run every test (no -x): count the failures")
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    opts = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if opts.k in m.name]
    t_all = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="spiral-mutate-") as tmp:
        if not opts.no_baseline:
            dest = Path(tmp, "baseline")
            copy_repo(dest)
            check_imports(dest, None)
            tests = ["tests/"] if opts.full else sorted({t for m in chosen for t in m.tests})
            rc, detail, secs = run_tests(dest, tests, stop_first=True)
            print(f"baseline ({' '.join(tests)}): rc={rc} {detail} [{secs:.0f} s]", flush=True)
            if rc != 0:
                print("the unmutated copy fails its tests: mutation results would mean nothing")
                return 2
        for m in chosen:
            dest = Path(tmp, m.name)
            copy_repo(dest)
            apply(dest, m)
            check_imports(dest, m)
            rc, detail, secs = run_tests(dest, ["tests/"] if opts.full else m.tests, stop_first=not opts.count)
            verdict = {0: "SURVIVED", 1: "caught"}.get(rc, f"error rc={rc}")
            rows.append((m.name, verdict, detail, secs))
            print(f"{m.name}: {verdict} ({detail}) [{secs:.0f} s]", flush=True)
            shutil.rmtree(dest)
    print("\n| mutation | result | tests | seconds |\n| --- | --- | --- | --- |")
    for name, verdict, detail, secs in rows:
        print(f"| {name} | {verdict} | {detail} | {secs:.0f} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    return 0 if all(v == "caught" for _, v, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
