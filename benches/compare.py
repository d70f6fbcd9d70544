#!/usr/bin/env python3
"""Side-by-side: baregpt's training step against PyTorch's, alternating in one run.

Usage (from the repository root):
    python3 benches/compare.py                          # every preset, 2 threads, 3 rounds
    python3 benches/compare.py --preset baregpt --rounds 5 --threads 2
    python3 benches/compare.py --preset gpt2-4l     # the GPT-2 family (tied, biases)
    python3 benches/compare.py --preset llama-4l    # the Llama family (RMSNorm, RoPE, GQA)
    python3 benches/compare.py --preset char-6l --context 512 --batch 4   # a custom shape
    python3 benches/compare.py --scaling            # char-6l at T = 256 ... 4096, 4,096 tokens
    python3 benches/compare.py --scaling --contexts 256,512 --rounds 1 --steps 2  # a quick check
    python3 benches/compare.py --peak-only          # the sgemm peak alone

Each round runs, per row, `cargo bench --bench train_step` and `benches/torch_step.py`
one after the other in fresh processes (so each process's peak memory is its own), with
the same thread count. The machine is shared and noisy, so only what is measured in the
same minute is compared: the table reports, per row, the median over rounds of each
side's median step time, the speed-up (PyTorch time / baregpt time), both sides'
GFLOP/s (the same FLOP formula on both sides, attention's T² terms included), ours as a
share of the machine's sgemm peak, both sides' peak memory growth during the run (resident
set after the step loop minus before the model was built), and our heap allocations per
timed step (calls, MiB, and the largest single allocation).

`--scaling` runs the scaling presets `char-6l-t{T}` instead: char-6l's model (V 65, C 384,
6 heads, 6 layers, MLP 4·C) at T = 256, 512, 1024, 2048, 4096 with the same 4,096 tokens
per step on every row (B = 4096 / T = 16, 8, 4, 2, 1), so the matrix-product work is the
same on every row and only attention grows; `--contexts` picks some of them.

The peak is `benches/sgemm_peak.py` (NumPy float32 `matmul` on square sizes, best of several
repeats) run before and after the rounds in a subprocess whose environment lacks
`OPENBLAS_CORETYPE` and `OPENBLAS_L2_SIZE` and pins `OPENBLAS_NUM_THREADS` and
`OMP_NUM_THREADS` to `--threads`; the better of the two is the peak. Every command line is
printed before it runs, so that the run can be repeated by hand.
Needs: cargo, torch, numpy.
"""
import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["tiny", "baregpt", "char-6l", "gpt2-small", "gpt2-4l", "llama-4l", "gpt2-124m"]
SCALING_CONTEXTS = [256, 512, 1024, 2048, 4096]
SCALING_TOKENS = 4096


def run_json(cmd, env=None):
    """The last stdout line of `cmd` as JSON; on failure its stderr, then exit."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"compare: {shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_model():
    """`lscpu`'s "Model name", or "unknown"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def peak_command(args):
    """The sgemm-peak command: `env` drops the OpenBLAS overrides and pins the threads."""
    threads = str(args.threads)
    return ["env", "-u", "OPENBLAS_CORETYPE", "-u", "OPENBLAS_L2_SIZE",
            f"OPENBLAS_NUM_THREADS={threads}", f"OMP_NUM_THREADS={threads}",
            sys.executable, "benches/sgemm_peak.py", "--sizes", args.peak_sizes,
            "--repeats", str(args.peak_repeats), "--json"]


def measure_peak(args, when):
    result = run_json(peak_command(args))
    sizes = ", ".join(f"{n}: {g:.1f}" for n, g in result["gflops_by_size"].items())
    print(f"sgemm peak ({when}): {result['peak_gflops']:.1f} GFLOP/s (by size {sizes}; "
          f"BLAS {result['blas']})", flush=True)
    return result["peak_gflops"]


def parse_contexts(text):
    try:
        contexts = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    unknown = [t for t in contexts if t not in SCALING_CONTEXTS]
    if unknown or not contexts:
        raise argparse.ArgumentTypeError(f"contexts must be among {SCALING_CONTEXTS}, got {text!r}")
    return contexts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--context", type=int, help="override every preset's sequence length T")
    parser.add_argument("--batch", type=int, help="override every preset's batch B")
    parser.add_argument("--scaling", action="store_true",
                        help=f"the scaling presets: char-6l at each T, {SCALING_TOKENS} tokens per step")
    parser.add_argument("--contexts", type=parse_contexts, default=SCALING_CONTEXTS,
                        help="with --scaling: comma-separated subset of " + ",".join(map(str, SCALING_CONTEXTS)))
    parser.add_argument("--peak-sizes", default="1024,2048,3072", help="square sgemm sizes for the peak")
    parser.add_argument("--peak-repeats", type=int, default=7)
    parser.add_argument("--peak-only", action="store_true", help="measure the sgemm peak and stop")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    if min(args.rounds, args.threads, args.steps, args.peak_repeats) < 1 or args.warmup < 0:
        parser.error("--rounds, --threads, --steps, --peak-repeats must be positive")
    if args.scaling and (args.context or args.batch):
        parser.error("--scaling fixes T and B; --context/--batch apply to --preset only")
    if (args.context is not None and args.context < 1) or (args.batch is not None and args.batch < 1):
        parser.error("--context and --batch must be positive")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"cpu: {cpu_model()}; {args.threads} threads; {now}")
    print(f"$ cd {ROOT}")
    print(f"$ {shlex.join(peak_command(args))}")
    if args.peak_only:
        measure_peak(args, "alone")
        return

    if args.scaling:
        rows = [(f"char-6l-t{t}", f"{t} ({SCALING_TOKENS // t})") for t in args.contexts]
    else:
        rows = [(p, p) for p in (PRESETS if args.preset == "all" else [args.preset])]
    common = ["--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.context:
        common += ["--context", str(args.context)]
    if args.batch:
        common += ["--batch", str(args.batch)]
    common.append("--json")
    ours_cmd = lambda p: ["cargo", "bench", "--quiet", "--bench", "train_step", "--", "--preset", p, *common]
    torch_cmd = lambda p: [sys.executable, "benches/torch_step.py", "--preset", p, *common]
    build = ["cargo", "bench", "--quiet", "--bench", "train_step", "--no-run"]
    print(f"$ {shlex.join(build)}")
    for preset, _ in rows:
        print(f"$ {shlex.join(ours_cmd(preset))}")
        print(f"$ {shlex.join(torch_cmd(preset))}")
    print(f"(each pair once per round, {args.rounds} rounds, rows in this order)", flush=True)
    subprocess.run(build, cwd=ROOT, check=True)

    peaks = [measure_peak(args, "before")]
    results = {p: {"baregpt": [], "pytorch": []} for p, _ in rows}
    for r in range(args.rounds):
        for preset, label in rows:
            results[preset]["baregpt"].append(run_json(ours_cmd(preset)))
            results[preset]["pytorch"].append(run_json(torch_cmd(preset)))
            b, t = results[preset]["baregpt"][-1], results[preset]["pytorch"][-1]
            print(f"round {r + 1} {label:>10}: baregpt {b['ms_per_step_median']:9.2f} ms, "
                  f"pytorch {t['ms_per_step_median']:9.2f} ms", flush=True)
    peaks.append(measure_peak(args, "after"))
    peak = max(peaks)
    print(f"peak used for 'share of peak': {peak:.1f} GFLOP/s (the better of before and after)")
    print()

    med = lambda rs, key: statistics.median(r[key] for r in rs)
    first = "T (B)" if args.scaling else "preset"
    columns = [first, "baregpt ms", "PyTorch ms", "speed-up", "ours GF/s"]
    if not args.scaling:
        columns.append("torch GF/s")
    columns += ["share of peak", "ours +MiB", "PyTorch +MiB", "allocs/step", "alloc MiB/step", "largest MiB"]
    table = []
    for preset, label in rows:
        ours, theirs = results[preset]["baregpt"], results[preset]["pytorch"]
        o, t = med(ours, "ms_per_step_median"), med(theirs, "ms_per_step_median")
        gf = med(ours, "gflops")
        row = [label, f"{o:.2f}", f"{t:.2f}", f"{t / o:.2f}x", f"{gf:.1f}"]
        if not args.scaling:
            row.append(f"{med(theirs, 'gflops'):.1f}")
        row += [f"{100 * gf / peak:.0f}%", f"{med(ours, 'rss_growth_mib'):.0f}",
                f"{med(theirs, 'rss_growth_mib'):.0f}", f"{med(ours, 'allocs_per_step'):.0f}",
                f"{med(ours, 'alloc_mib_per_step'):.1f}", f"{med(ours, 'largest_alloc_mib'):.2f}"]
        table.append(row)
    if any(med(results[p]["baregpt"], "gflops") > peak for p, _ in rows):
        print("warning: a step ran faster than the sgemm peak: the peak was measured while the machine "
              "was busy, so the shares are not meaningful")
    if args.markdown:
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for row in table:
            row[3] = row[3].replace("x", "×")  # the speed-up
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
        print(" | ".join(c.rjust(w) for c, w in zip(columns, widths)))
        print("-" * (sum(widths) + 3 * (len(widths) - 1)))
        for row in table:
            print(" | ".join(c.rjust(w) for c, w in zip(row, widths)))

    # Whether a step's allocations grow with the step count: the first and last half of the
    # timed steps of every run, and the most any step allocated.
    print()
    grew = []
    for preset, label in rows:
        for i, r in enumerate(results[preset]["baregpt"]):
            if r["allocs_last_half"] > r["allocs_first_half"] or r["alloc_mib_last_half"] > r["alloc_mib_first_half"]:
                grew.append(f"{label} round {i + 1}: first half {r['allocs_first_half']:.0f} "
                            f"({r['alloc_mib_first_half']:.1f} MiB), last half {r['allocs_last_half']:.0f} "
                            f"({r['alloc_mib_last_half']:.1f} MiB), by step {r['allocs_by_step']}")
    if grew:
        print("allocations per step grew over the timed steps:")
        print("\n".join("  " + g for g in grew))
    else:
        print(f"allocations per step did not grow: in every run the last half of the {args.steps} timed "
              "steps allocated no more (calls and bytes) than the first half")


if __name__ == "__main__":
    main()
