#!/usr/bin/env python3
"""Side-by-side: baregpt's training step against PyTorch's, alternating in one run.

Usage (from the repository root):
    python3 benches/compare.py                          # every preset, 2 threads, 3 rounds
    python3 benches/compare.py --preset baregpt --rounds 5 --threads 2
    python3 benches/compare.py --preset gpt2-4l     # the GPT-2 family (tied, biases)
    python3 benches/compare.py --preset llama-4l    # the Llama family (RMSNorm, RoPE, GQA)

Each round runs, per preset, `cargo bench --bench train_step` and `benches/torch_step.py`
one after the other in fresh processes (so each process's peak memory is its own), with
the same thread count. The machine is shared and noisy, so only what is measured in the
same minute is compared: the table reports, per preset, the median over rounds of each
side's median step time, the speed-up (PyTorch time / baregpt time), both sides'
GFLOP/s, and both sides' peak memory growth during the run (resident set after the step
loop minus before the model was built).
Needs: cargo, torch.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["tiny", "baregpt", "char-6l", "gpt2-small", "gpt2-4l", "llama-4l"]


def run_json(cmd):
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    presets = PRESETS if args.preset == "all" else [args.preset]
    common = ["--preset", "{}", "--threads", str(args.threads), "--steps", str(args.steps), "--json"]
    ours_cmd = ["cargo", "bench", "--quiet", "--bench", "train_step", "--"] + common
    torch_cmd = [sys.executable, "benches/torch_step.py"] + common
    subprocess.run(["cargo", "bench", "--quiet", "--bench", "train_step", "--no-run"], cwd=ROOT, check=True)
    results = {p: {"baregpt": [], "pytorch": []} for p in presets}
    for r in range(args.rounds):
        for preset in presets:
            fill = lambda cmd: [preset if c == "{}" else c for c in cmd]
            results[preset]["baregpt"].append(run_json(fill(ours_cmd)))
            results[preset]["pytorch"].append(run_json(fill(torch_cmd)))
            b, t = results[preset]["baregpt"][-1], results[preset]["pytorch"][-1]
            print(f"round {r + 1} {preset:>10}: baregpt {b['ms_per_step_median']:9.2f} ms, "
                  f"pytorch {t['ms_per_step_median']:9.2f} ms", flush=True)
    print()
    print(f"{'preset':>10} | {'baregpt ms':>10} | {'pytorch ms':>10} | {'speed-up':>8} | "
          f"{'ours GF/s':>9} | {'torch GF/s':>10} | {'ours +MiB':>9} | {'torch +MiB':>10}")
    print("-" * 96)
    for preset in presets:
        ours, theirs = results[preset]["baregpt"], results[preset]["pytorch"]
        med = lambda rs, key: statistics.median(r[key] for r in rs)
        o, t = med(ours, "ms_per_step_median"), med(theirs, "ms_per_step_median")
        print(f"{preset:>10} | {o:10.2f} | {t:10.2f} | {t / o:7.2f}x | {med(ours, 'gflops'):9.1f} | "
              f"{med(theirs, 'gflops'):10.1f} | {med(ours, 'rss_growth_mib'):9.0f} | "
              f"{med(theirs, 'rss_growth_mib'):10.0f}")


if __name__ == "__main__":
    main()
