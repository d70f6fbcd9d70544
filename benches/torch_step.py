#!/usr/bin/env python3
"""The PyTorch peer of `benches/train_step.rs`: one training step of the same GPT, timed.

Same architecture as baregpt's `Gpt` with a final LayerNorm: token + learned position
embeddings; pre-LN blocks of causal multi-head attention (bias-free Q/K/V/O projections)
and a tanh-GELU MLP with biases, each with a residual; final LayerNorm; linear head with
bias; mean cross-entropy. One step is zero_grad + forward + backward + Adam (lr 3e-4),
in float32, eager mode, attention through `scaled_dot_product_attention`.

The two family presets build what `GptConfig::gpt2` / `GptConfig::llama` build:
* `gpt2-4l`: GPT-2 (learned positions, LayerNorm eps 1e-5, attention with biases, GELU(tanh)
  MLP of 4·C with biases, final LayerNorm, bias-free head tied to the token table; dropout
  off);
* `llama-4l`: Llama (token embedding only, RMSNorm eps 1e-6, rotary positions with theta
  10000 in the rotate_half convention, grouped-query attention, SwiGLU MLP, no biases, final
  RMSNorm, untied bias-free head).

The scaling presets `char-6l-t256`, `-t512`, `-t1024`, `-t2048`, `-t4096` are `char-6l`'s
model at that context with a fixed 4,096 tokens per step (B = 4096 / T), as in train_step.rs.
`--context T` and `--batch B` override any preset's sequence length and batch.

Usage:
    python3 benches/torch_step.py --preset baregpt --threads 2 --json
    python3 benches/torch_step.py --preset scaling --threads 2          # the five scaling presets
    python3 benches/torch_step.py --preset char-6l --context 512 --batch 4

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

# The family presets, the same table as benches/train_step.rs: (vocab, d_model, heads,
# kv heads, layers, mlp hidden, T, B).
FAMILY_PRESETS = {
    "gpt2-4l": ("gpt2", (4096, 256, 8, 8, 4, 1024, 128, 4)),
    "llama-4l": ("llama", (4096, 256, 8, 4, 4, 768, 128, 4)),
    # GPT-2 small itself (its 1,024 positions), stepped on sequences of 128.
    "gpt2-124m": ("gpt2", (50257, 768, 12, 12, 12, 3072, 128, 4)),
}
FAMILY_POSITIONS = {"gpt2-124m": 1024}


# The scaling presets: char-6l at each context, 4,096 tokens per step (B = 4096 / T).
SCALING_CONTEXTS = (256, 512, 1024, 2048, 4096)
SCALING_TOKENS = 4096
SCALING_PRESETS = {f"char-6l-t{t}": t for t in SCALING_CONTEXTS}


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


class Gpt2Block(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(d, d) for _ in range(4))
        self.fc, self.proj = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = self.ln1(x)
        ctx = F.scaled_dot_product_attention(split(self.w_q(a)), split(self.w_k(a)), split(self.w_v(a)), is_causal=True)
        x = x + self.w_o(ctx.transpose(1, 2).reshape(b, t, d))
        return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt2(nn.Module):
    """GPT-2 with dropout off; the head is the token table (logits = x·tokᵀ)."""

    def __init__(self, vocab, d, heads, layers, hidden, context):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Gpt2Block(d, heads, hidden) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)

    def loss(self, ids, targets):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.tok.weight.T
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaBlock(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden):
        super().__init__()
        self.heads, self.kv_heads, self.dh = heads, kv_heads, d // heads
        self.ln1, self.ln2 = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.w_q = nn.Linear(d, d, bias=False)
        self.w_k = nn.Linear(d, kv_heads * self.dh, bias=False)
        self.w_v = nn.Linear(d, kv_heads * self.dh, bias=False)
        self.w_o = nn.Linear(d, d, bias=False)
        self.w_gate, self.w_up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        split = lambda y, n: y.view(b, t, n, self.dh).transpose(1, 2)
        a = self.ln1(x)
        q, k = split(self.w_q(a), self.heads), split(self.w_k(a), self.kv_heads)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        v = split(self.w_v(a), self.kv_heads)
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.w_o(ctx.transpose(1, 2).reshape(b, t, d))
        z = self.ln2(x)
        return x + self.w_down(F.silu(self.w_gate(z)) * self.w_up(z))


class Llama(nn.Module):
    def __init__(self, vocab, d, heads, kv_heads, layers, hidden, theta=10000.0):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(LlamaBlock(d, heads, kv_heads, hidden) for _ in range(layers))
        self.ln_f, self.head = nn.RMSNorm(d, eps=1e-6), nn.Linear(d, vocab, bias=False)
        dh = d // heads
        self.inv_freq = 1.0 / theta ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh)

    def loss(self, ids, targets):
        angles = torch.outer(torch.arange(ids.shape[1], dtype=torch.float32), self.inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        x = self.tok(ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def flops(vocab, d, layers, t, b):
    return 6 * (layers * 12 * d * d + d * vocab) * b * t + layers * b * 3 * 4 * t * t * d


def family_flops(vocab, d, heads, kv_heads, layers, hidden, t, b, swiglu):
    """As `flops`, for grouped K/V projections and a two- or three-matrix MLP."""
    kv = kv_heads * (d // heads)
    per_layer = 2 * d * d + 2 * d * kv + (3 if swiglu else 2) * d * hidden
    return 6 * (layers * per_layer + d * vocab) * b * t + layers * b * 3 * 4 * t * t * d


def build(name, context=None, batch=None):
    """(model, vocab, T, B, GFLOP per step) of a preset, with T and B overridden if given."""
    if name in SCALING_PRESETS:
        t = SCALING_PRESETS[name]
        return build("char-6l", context or t, batch or SCALING_TOKENS // t)
    if name in FAMILY_PRESETS:
        arch, (vocab, d, heads, kv_heads, layers, hidden, t, b) = FAMILY_PRESETS[name]
        t, b = context or t, batch or b
        if arch == "gpt2":
            model = Gpt2(vocab, d, heads, layers, hidden, FAMILY_POSITIONS.get(name, t))
        else:
            model = Llama(vocab, d, heads, kv_heads, layers, hidden)
        f = family_flops(vocab, d, heads, kv_heads, layers, hidden, t, b, arch == "llama")
        return model, vocab, t, b, f / 1e9
    vocab, d, heads, layers, t, b = PRESETS[name]
    t, b = context or t, batch or b
    return Gpt(vocab, d, heads, layers, t), vocab, t, b, flops(vocab, d, layers, t, b) / 1e9


def run(name, steps, warmup, context=None, batch=None):
    rss_before = rss_mib("VmRSS")
    torch.manual_seed(0)
    model, vocab, t, b, gflop = build(name, context, batch)
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "impl": "pytorch",
        "preset": name,
        "context": t,
        "batch": b,
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
    parser.add_argument("--preset", choices=[*PRESETS, *FAMILY_PRESETS, *SCALING_PRESETS, "all", "scaling"],
                        default="all")
    parser.add_argument("--context", type=int, help="override the preset's sequence length T")
    parser.add_argument("--batch", type=int, help="override the preset's batch B")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for flag in ("context", "batch"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be positive")
    if args.steps < 1:
        parser.error("--steps must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    groups = {"all": [*PRESETS, *FAMILY_PRESETS], "scaling": [*SCALING_PRESETS]}
    for name in groups.get(args.preset, [args.preset]):
        r = run(name, args.steps, args.warmup, args.context, args.batch)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{name:>11} f32 T={r['context']} B={r['batch']} threads={r['threads']}: {r['ms_per_step_median']:9.2f} ms/step "
                  f"(min {r['ms_min']}, max {r['ms_max']}), {r['tokens_per_s']:9.1f} tok/s, "
                  f"{r['gflops']:6.2f} GFLOP/s, peak RSS {r['peak_rss_mib']:.0f} MiB "
                  f"(+{r['rss_growth_mib']:.0f} MiB)", flush=True)


if __name__ == "__main__":
    main()
