#!/usr/bin/env python3
"""The PyTorch peer of `benches/train_step.rs`: one training step of the same GPT, timed.

Same architecture as baregpt's `Gpt` with a final LayerNorm: token + learned position
embeddings; pre-LN blocks of causal multi-head attention (bias-free Q/K/V/O projections)
and a tanh-GELU MLP with biases, each with a residual; final LayerNorm; linear head with
bias; mean cross-entropy. One step is zero_grad + forward + backward + Adam (lr 3e-4),
in float32, eager mode, attention through `scaled_dot_product_attention`.

Usage:
    python3 benches/torch_step.py --preset baregpt --threads 2 --json

Prints, per preset, the median/min/max milliseconds of `--steps` steps after `--warmup`,
tokens/s, GFLOP/s (the same FLOP formula as train_step.rs) and memory: the process's peak
resident set and its growth over the resident set before the model was built.
Needs: torch.
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

# (vocab, d_model, heads, layers, T, B), the same table as benches/train_step.rs
PRESETS = {
    "tiny": (65, 64, 4, 2, 32, 8),
    "baregpt": (65, 256, 4, 2, 128, 16),
    "char-6l": (65, 384, 6, 6, 256, 8),
    "gpt2-small": (50257, 768, 12, 12, 64, 4),
}


def rss_mib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    return 0.0


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = self.ln1(x)
        ctx = F.scaled_dot_product_attention(split(self.w_q(a)), split(self.w_k(a)), split(self.w_v(a)), is_causal=True)
        x = x + self.w_o(ctx.transpose(1, 2).reshape(b, t, d))
        return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, d, heads, layers, context):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def loss(self, ids, targets):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def flops(vocab, d, layers, t, b):
    return 6 * (layers * 12 * d * d + d * vocab) * b * t + layers * b * 3 * 4 * t * t * d


def run(name, steps, warmup):
    vocab, d, heads, layers, t, b = PRESETS[name]
    rss_before = rss_mib("VmRSS")
    torch.manual_seed(0)
    model = Gpt(vocab, d, heads, layers, t)
    adam = torch.optim.Adam(model.parameters(), lr=3e-4)
    ids, targets = torch.randint(0, vocab, (b, t)), torch.randint(0, vocab, (b, t))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        adam.zero_grad(set_to_none=True)
        loss = model.loss(ids, targets)
        loss.backward()
        adam.step()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    median = statistics.median(times)
    gflop = flops(vocab, d, layers, t, b) / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "impl": "pytorch",
        "preset": name,
        "threads": torch.get_num_threads(),
        "ms_per_step_median": round(median, 2),
        "ms_min": round(min(times), 2),
        "ms_max": round(max(times), 2),
        "tokens_per_s": round(b * t / (median / 1e3), 1),
        "gflop_per_step": round(gflop, 3),
        "gflops": round(gflop / (median / 1e3), 2),
        "peak_rss_mib": round(peak, 1),
        "rss_growth_mib": round(peak - rss_before, 1),
        "loss_after": round(float(loss.detach()), 4),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in PRESETS if args.preset == "all" else [args.preset]:
        r = run(name, args.steps, args.warmup)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{name:>11} f32 threads={r['threads']}: {r['ms_per_step_median']:9.2f} ms/step "
                  f"(min {r['ms_min']}, max {r['ms_max']}), {r['tokens_per_s']:9.1f} tok/s, "
                  f"{r['gflops']:6.2f} GFLOP/s, peak RSS {r['peak_rss_mib']:.0f} MiB "
                  f"(+{r['rss_growth_mib']:.0f} MiB)", flush=True)


if __name__ == "__main__":
    main()
