#!/usr/bin/env python3
"""Writes the PyTorch parity fixtures that `tests/parity.rs` checks baregpt against.

Requirements: Python 3 with `torch` and `numpy` only (the safetensors files are written by
hand below). Run from anywhere:

    python3 tests/parity/generate.py            # (re)write tests/parity/fixtures/*.safetensors
    python3 tests/parity/generate.py --check    # regenerate in memory, compare byte for byte

What it does: for every case in CASES it builds the layer as an independent PyTorch module in
float64 (standard torch ops: nn.Linear, nn.Embedding, nn.LayerNorm, F.gelu(approximate="tanh"),
F.scaled_dot_product_attention(is_causal=True), F.cross_entropy, torch.rsqrt, F.silu), draws inputs, parameters and
an upstream gradient from a seeded generator, runs forward and autograd backward, and stores
everything in one safetensors file per case:

    input/<name>        inputs (x, ids, targets, q, k, v; ids and targets as I64)
    upstream/<name>     the gradient fed to backward (dy, or d_loss for a loss)
    output/<name>       forward results (y, probs, logits, loss)
    input_grad/<name>   dL/d(input) for float inputs
    param/<torch name>  parameter values, in torch's layout
    param_grad/<torch name>  dL/d(parameter), in torch's layout
    final_param/<torch name>  (optimizer cases) parameters after the last step

Parameter names follow `names.json` beside this file, the single mapping between baregpt's
dotted names and these modules' `named_parameters()`; this script checks that the mapping is
a bijection onto each module's parameters, and the Rust test uses the same file to load the
tensors into our layers (transposing Linear weights). The header `__metadata__` records the
case, its kind and its configuration as JSON strings.

Determinism: one thread, `torch.use_deterministic_algorithms(True)`, float64, a fixed seed per
case, tensors and JSON keys written in sorted order. Running the script twice gives
byte-identical files (`--check` verifies this against the committed ones).
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
NAMES = os.path.join(HERE, "names.json")
LN_EPS = 1e-5

# --------------------------------------------------------------------------------------
# The name mapping (names.json), expanded exactly as tests/parity.rs expands it.
# --------------------------------------------------------------------------------------


def load_mapping():
    with open(NAMES, encoding="utf-8") as f:
        return json.load(f)["layers"]


def join(prefix, name):
    return name if not prefix else (prefix if not name else f"{prefix}.{name}")


def expand(mapping, layer, config):
    """[(our dotted name, torch name, transpose)] for `layer` with `config`, in file order."""
    out = []
    for entry in mapping[layer]:
        if "when" in entry and not config[entry["when"]]:
            continue
        indices = range(config[entry["repeat"]]) if "repeat" in entry else [None]
        for i in indices:
            ours = entry["ours"] if i is None else entry["ours"].replace("{i}", str(i))
            theirs = entry["torch"] if i is None else entry["torch"].replace("{i}", str(i))
            if "layer" in entry:
                sub = dict(config, **entry.get("set", {}))
                for o, t, tr in expand(mapping, entry["layer"], sub):
                    out.append((join(ours, o), join(theirs, t), tr))
            else:
                out.append((ours, theirs, bool(entry.get("transpose", False))))
    return out


def check_mapping(mapping, layer, config, module):
    """The mapping must name every parameter of `module` exactly once, with sane layouts."""
    entries = expand(mapping, layer, config)
    params = dict(module.named_parameters())
    mapped = [t for _, t, _ in entries]
    if sorted(mapped) != sorted(params) or len(set(mapped)) != len(mapped):
        raise SystemExit(f"names.json does not match {layer}: {sorted(mapped)} vs {sorted(params)}")
    ours = [o for o, _, _ in entries]
    if len(set(ours)) != len(ours):
        raise SystemExit(f"names.json repeats one of our names in {layer}: {ours}")
    for _, t, transpose in entries:
        if transpose and params[t].dim() != 2:
            raise SystemExit(f"names.json transposes {t}, which is not a matrix")


# --------------------------------------------------------------------------------------
# The reference modules: plain PyTorch, independent of baregpt's code.
# --------------------------------------------------------------------------------------


class RefEmbedding(nn.Module):
    def __init__(self, vocab_size, d_model, context):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(context, d_model)

    def forward(self, ids):
        t = ids.shape[1]
        return self.wte(ids) + self.wpe(torch.arange(t))


class RefAttention(nn.Module):
    """Causal multi-head self-attention; heads are contiguous column slices of C."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def split(self, x):
        b, t, c = x.shape
        return x.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (self.split(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(ctx.transpose(1, 2).reshape(b, t, c))


def explicit_causal_attention(q, k, v, n_heads):
    """(ctx, probs) with the mask and softmax written out, to expose the probabilities."""
    b, t, c = q.shape
    d = c // n_heads
    qh, kh, vh = (z.view(b, t, n_heads, d).transpose(1, 2) for z in (q, k, v))
    scores = qh @ kh.transpose(-2, -1) / math.sqrt(d)
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    ctx = (probs @ vh).transpose(1, 2).reshape(b, t, c)
    return ctx, probs


def rotate_half(x):
    """Hugging Face Llama's rotate_half: (x1, x2) -> (-x2, x1) over the last axis's halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_cos_sin(positions, head_dim, theta):
    """cos, sin (T, D) of positions * inv_freq, inv_freq_i = theta^(-2i/D), repeated over the
    two halves (Llama's rotary embedding, computed in float64)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def repeat_kv(x, n_rep):
    """(B, H_kv, T, D) -> (B, H_kv * n_rep, T, D), each key/value head repeated n_rep times
    in place (Hugging Face's repeat_kv)."""
    b, h_kv, t, d = x.shape
    return x[:, :, None, :, :].expand(b, h_kv, n_rep, t, d).reshape(b, h_kv * n_rep, t, d)


class RefLlamaAttention(nn.Module):
    """Causal attention as Hugging Face's Llama writes it: q_proj, k_proj, v_proj, o_proj
    (optionally with biases), grouped key/value heads through repeat_kv, and rotary
    embeddings on queries and keys through rotate_half (when rope_theta is set)."""

    def __init__(self, d_model, n_heads, n_kv_heads, bias, rope_theta, dropout=None):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        # (p, seed): GPT-2's attn_pdrop on the probabilities, with the crate's mask of pass 0.
        self.dropout = dropout
        self.head_dim = d_model // n_heads
        self.rope_theta = rope_theta
        kv = n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv, bias=bias)
        self.v_proj = nn.Linear(d_model, kv, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)

    def heads(self, x):
        """(q, k, v) as (B, H, T, D) with k, v already repeated, q and k rotated."""
        b, t, _ = x.shape
        d = self.head_dim
        q = self.q_proj(x).view(b, t, self.n_heads, d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, d).transpose(1, 2)
        if self.rope_theta is not None:
            cos, sin = rotary_cos_sin(torch.arange(t), d, self.rope_theta)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        n_rep = self.n_heads // self.n_kv_heads
        return q, repeat_kv(k, n_rep), repeat_kv(v, n_rep)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.heads(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        if self.dropout is not None:
            p, seed = self.dropout
            probs = probs * dropout_mask(p, seed, 0, probs.shape)
        ctx = (probs @ v).transpose(1, 2).reshape(b, t, c)
        return self.o_proj(ctx)


class RefMlp(nn.Module):
    def __init__(self, d_model, hidden):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class RefRmsNorm(nn.Module):
    """Hugging Face Llama's RMSNorm, written out: x * rsqrt(mean(x^2) + eps) * weight."""

    def __init__(self, d_model, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (x * rstd)


class RefSwiGlu(nn.Module):
    """Hugging Face Llama's MLP: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases."""

    def __init__(self, d_model, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class RefBlock(nn.Module):
    """Pre-LN: h = x + attn(ln_1(x)); y = h + mlp(ln_2(h))."""

    def __init__(self, d_model, n_heads, hidden):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.attn = RefAttention(d_model, n_heads)
        self.ln_2 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.mlp = RefMlp(d_model, hidden)

    def forward(self, x):
        h = x + self.attn(self.ln_1(x))
        return h + self.mlp(self.ln_2(h))


class RefGpt(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = cfg["d_model"]
        self.wte = nn.Embedding(cfg["vocab_size"], c)
        self.wpe = nn.Embedding(cfg["context"], c)
        self.blocks = nn.ModuleList(
            RefBlock(c, cfg["n_heads"], cfg["mlp_hidden"]) for _ in range(cfg["n_layers"])
        )
        self.ln_f = nn.LayerNorm(c, eps=LN_EPS) if cfg["final_norm"] else None
        self.lm_head = nn.Linear(c, cfg["vocab_size"])

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return self.lm_head(x)


# --------------------------------------------------------------------------------------
# Dropout with baregpt's masks: the rule of src/kernels/dropout.rs, reimplemented. Element i
# (row-major) of pass n of the site seeded s is kept when bits >> 11 >= floor(p * 2^53), with
# bits = mix(key + (i + 1) * GAMMA), key = mix(s + mix(n)), mix the SplitMix64 finaliser;
# kept elements are scaled by 1 / (1 - p). The torch modules below multiply by these masks.
# --------------------------------------------------------------------------------------

U64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(z):
    """SplitMix64's finaliser on a Python int or a numpy uint64 array."""
    if isinstance(z, int):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
        return z ^ (z >> 31)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keeps(p, seed, pass_, n):
    """Which of elements 0..n a pass keeps (bool array)."""
    key = np.uint64(mix((seed + mix(pass_)) & U64))
    threshold = np.uint64(int(p * 9007199254740992.0))  # exact product, truncated
    with np.errstate(over="ignore"):
        bits = mix(key + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GAMMA))
    return (bits >> np.uint64(11)) >= threshold


def dropout_mask(p, seed, pass_, shape):
    """The mask of one pass as a float64 tensor of `shape`: 1/(1 - p) kept, 0 dropped."""
    keep = keeps(p, seed, pass_, math.prod(shape))
    return torch.from_numpy(keep.astype(np.float64) * (1.0 / (1.0 - p))).reshape(shape)


# The bits src/kernels/dropout.rs's `known_values_pin_the_rule` pins: the same rule.
assert "".join("1" if k else "0" for k in keeps(0.5, 0, 0, 32)) == \
    "10010001010111110101111011001110"
assert mix(1) == 0x5692161D100B05E5


class RefBlockDropout(RefBlock):
    """RefBlock with residual dropout: h = x + m1 * attn(ln_1(x)); y = h + m2 * mlp(ln_2(h)),
    the masks of pass 0 of the sites seeded seeds[0] and seeds[1]."""

    def __init__(self, d_model, n_heads, hidden, p, seeds):
        super().__init__(d_model, n_heads, hidden)
        self.p, self.seeds = p, seeds

    def forward(self, x):
        m1, m2 = (dropout_mask(self.p, s, 0, tuple(x.shape)) for s in self.seeds)
        h = x + m1 * self.attn(self.ln_1(x))
        return h + m2 * self.mlp(self.ln_2(h))


class RefGptDropout(RefGpt):
    """RefGpt with embedding dropout after wte + wpe and residual dropout in every block;
    seeds = [embedding, block 0 attention, block 0 MLP, block 1 attention, ...]."""

    def __init__(self, cfg):
        super().__init__(cfg)
        seeds, p = cfg["seeds"], cfg["resid_pdrop"]
        self.embd_pdrop, self.embd_seed = cfg["embd_pdrop"], seeds[0]
        self.blocks = nn.ModuleList(
            RefBlockDropout(cfg["d_model"], cfg["n_heads"], cfg["mlp_hidden"], p,
                            seeds[1 + 2 * i: 3 + 2 * i])
            for i in range(cfg["n_layers"])
        )

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        x = x * dropout_mask(self.embd_pdrop, self.embd_seed, 0, tuple(x.shape))
        for block in self.blocks:
            x = block(x)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return self.lm_head(x)
# Tied embeddings: the head's weight is the token table itself (GPT-2's weight tying).
# --------------------------------------------------------------------------------------


class RefTiedGpt(RefGpt):
    """RefGpt whose lm_head.weight *is* wte.weight (one Parameter, so named_parameters() and
    the optimizer see it once and autograd sums its two uses); lm_head.bias if head_bias."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.lm_head = nn.Linear(cfg["d_model"], cfg["vocab_size"], bias=cfg["head_bias"])
        self.lm_head.weight = self.wte.weight


def make_gpt(cfg):
    """(module, names.json layer) for a whole-GPT case: tied when cfg["tied_head"]."""
    if cfg.get("tied_head", False):
        return RefTiedGpt(cfg), "GptTied"
    return RefGpt(cfg), "Gpt"


def mean_cross_entropy(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# --------------------------------------------------------------------------------------
# Deterministic values.
# --------------------------------------------------------------------------------------


def randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def init_params(module, gen):
    """Overwrites every parameter (sorted by name) with seeded, non-trivial values:
    LayerNorm and RMSNorm gains near 1 and shifts near 0 (not exactly, so their gradients matter),
    weights scaled by 1/sqrt(fan_in), biases small, embeddings of unit scale."""
    kinds = {}
    for prefix, m in module.named_modules():
        for local, _ in m.named_parameters(recurse=False):
            kinds[join(prefix, local)] = (type(m), local)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            kind, local = kinds[name]
            if kind is nn.LayerNorm or kind is RefRmsNorm:
                value = randn(gen, *p.shape, scale=0.2) + (1.0 if local == "weight" else 0.0)
            elif kind is nn.Embedding:
                value = randn(gen, *p.shape)
            elif local == "bias":
                value = randn(gen, *p.shape, scale=0.2)
            else:
                value = randn(gen, *p.shape, scale=1.0 / math.sqrt(p.shape[1]))
            p.copy_(value)


def random_ids(gen, high, *shape):
    return torch.randint(0, high, shape, generator=gen, dtype=torch.int64)


# --------------------------------------------------------------------------------------
# Cases. Each returns (tensors, config); kind selects the runner in tests/parity.rs.
# --------------------------------------------------------------------------------------


def params_and_grads(module, out):
    for name, p in module.named_parameters():
        out[f"param/{name}"] = p.detach()
        out[f"param_grad/{name}"] = p.grad.detach()


def float_layer_case(mapping, layer, config, module, x, gen):
    """Forward/backward of a float-to-float module with a random upstream gradient."""
    check_mapping(mapping, layer, config, module)
    init_params(module, gen)
    x = x.clone().requires_grad_(True)
    y = module(x)
    dy = randn(gen, *y.shape)
    y.backward(dy)
    out = {"input/x": x.detach(), "upstream/dy": dy, "output/y": y.detach(),
           "input_grad/x": x.grad.detach()}
    params_and_grads(module, out)
    return out


def case_linear(mapping, gen, cfg):
    b, t = cfg["batch"], cfg["time"]
    module = nn.Linear(cfg["c_in"], cfg["c_out"], bias=cfg["bias"])
    return float_layer_case(mapping, "Linear", cfg, module, randn(gen, b, t, cfg["c_in"]), gen)


def case_layer_norm(mapping, gen, cfg):
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    x = randn(gen, b, t, c, scale=cfg["x_scale"]) + cfg["x_shift"]
    module = nn.LayerNorm(c, eps=LN_EPS)
    return float_layer_case(mapping, "LayerNorm", cfg, module, x, gen)


def case_rms_norm(mapping, gen, cfg):
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    x = randn(gen, b, t, c, scale=cfg["x_scale"]) + cfg["x_shift"]
    module = RefRmsNorm(c, cfg["eps"])
    out = float_layer_case(mapping, "RmsNorm", cfg, module, x, gen)
    # torch's own nn.RMSNorm agrees with the written-out module (a check of the reference).
    builtin = nn.RMSNorm(c, eps=cfg["eps"])
    with torch.no_grad():
        builtin.weight.copy_(module.weight)
        assert torch.allclose(builtin(out["input/x"]), out["output/y"], rtol=0, atol=1e-13)
    return out


def case_swiglu(mapping, gen, cfg):
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    module = RefSwiGlu(c, cfg["mlp_hidden"])
    x = randn(gen, b, t, c, scale=cfg["x_scale"])
    return float_layer_case(mapping, "SwiGlu", cfg, module, x, gen)


def case_attention(mapping, gen, cfg):
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    module = RefAttention(c, cfg["n_heads"])
    out = float_layer_case(mapping, "Attention", cfg, module, randn(gen, b, t, c), gen)
    # The fused SDPA path and the written-out mask agree (a check of the reference itself).
    with torch.no_grad():
        x = out["input/x"]
        q, k, v = module.q_proj(x), module.k_proj(x), module.v_proj(x)
        ctx, _ = explicit_causal_attention(q, k, v, cfg["n_heads"])
        assert torch.allclose(module.out_proj(ctx), out["output/y"], rtol=0, atol=1e-13)
    return out


def case_llama_attention(mapping, gen, cfg):
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    dropout = (cfg["dropout_p"], cfg["dropout_seed"]) if "dropout_p" in cfg else None
    module = RefLlamaAttention(c, cfg["n_heads"], cfg["n_kv_heads"], cfg["bias"],
                               cfg["rope_theta"], dropout)
    out = float_layer_case(mapping, "LlamaAttention", cfg, module, randn(gen, b, t, c), gen)
    if dropout is not None:
        return out  # SDPA below has no way to take the crate's mask
    # The written-out attention and torch's fused grouped SDPA agree (a check of the
    # reference itself): SDPA repeats the key/value heads as repeat_kv does.
    with torch.no_grad():
        x = out["input/x"]
        q, k, v = module.heads(x)
        n_rep = cfg["n_heads"] // cfg["n_kv_heads"]
        k, v = k[:, ::n_rep], v[:, ::n_rep]  # back to the H_kv distinct heads
        fused = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        y = module.o_proj(fused.transpose(1, 2).reshape(b, t, c))
        assert torch.allclose(y, out["output/y"], rtol=0, atol=1e-13)
    return out


def case_mlp(mapping, gen, cfg):
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    module = RefMlp(c, cfg["mlp_hidden"])
    return float_layer_case(mapping, "Mlp", cfg, module, randn(gen, b, t, c), gen)


def case_block(mapping, gen, cfg):
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    module = RefBlock(c, cfg["n_heads"], cfg["mlp_hidden"])
    return float_layer_case(mapping, "Block", cfg, module, randn(gen, b, t, c), gen)


def case_gelu(mapping, gen, cfg):
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    x = randn(gen, b, t, c, scale=3.0)
    x.view(-1)[:6] = torch.tensor([0.0, 1e-3, -1e-3, 10.0, -10.0, -3.0], dtype=torch.float64)
    x.requires_grad_(True)
    y = F.gelu(x, approximate="tanh")
    dy = randn(gen, *y.shape)
    y.backward(dy)
    return {"input/x": x.detach(), "upstream/dy": dy, "output/y": y.detach(),
            "input_grad/x": x.grad.detach()}


def case_attention_core(mapping, gen, cfg):
    b, t, c, h = cfg["batch"], cfg["time"], cfg["d_model"], cfg["n_heads"]
    q, k, v = (randn(gen, b, t, c).requires_grad_(True) for _ in range(3))
    ctx, probs = explicit_causal_attention(q, k, v, h)
    d_ctx = randn(gen, b, t, c)
    ctx.backward(d_ctx)
    split = lambda z: z.view(b, t, h, c // h).transpose(1, 2)
    fused = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
    assert torch.allclose(fused.transpose(1, 2).reshape(b, t, c), ctx, rtol=0, atol=1e-13)
    out = {"upstream/d_ctx": d_ctx, "output/ctx": ctx.detach(), "output/probs": probs.detach()}
    for name, z in (("q", q), ("k", k), ("v", v)):
        out[f"input/{name}"] = z.detach()
        out[f"input_grad/{name}"] = z.grad.detach()
    return out


def case_embedding(mapping, gen, cfg):
    module = RefEmbedding(cfg["vocab_size"], cfg["d_model"], cfg["context"])
    check_mapping(mapping, "Embedding", cfg, module)
    init_params(module, gen)
    ids = random_ids(gen, cfg["vocab_size"], cfg["batch"], cfg["time"])
    ids.view(-1)[-1] = ids.view(-1)[0]  # a repeated id, so the scatter-add must accumulate
    y = module(ids)
    dy = randn(gen, *y.shape)
    y.backward(dy)
    out = {"input/ids": ids, "upstream/dy": dy, "output/y": y.detach()}
    params_and_grads(module, out)
    return out


def case_cross_entropy(mapping, gen, cfg):
    b, t, v = cfg["batch"], cfg["time"], cfg["vocab_size"]
    logits = randn(gen, b, t, v, scale=cfg["logit_scale"]).requires_grad_(True)
    targets = random_ids(gen, v, b, t)
    loss = mean_cross_entropy(logits, targets)
    d_loss = torch.rand((), generator=gen, dtype=torch.float64) + 0.5
    loss.backward(d_loss)
    return {"input/logits": logits.detach(), "input/targets": targets,
            "upstream/d_loss": d_loss.reshape(1, 1, 1), "output/loss": loss.detach(),
            "input_grad/logits": logits.grad.detach()}


def case_dropout(mapping, gen, cfg):
    """Dropout alone: y = m * x with pass 0's mask of the site seeded cfg["seed"]."""
    check_mapping(mapping, "Dropout", cfg, nn.Identity())  # no parameters
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    x = randn(gen, b, t, c).requires_grad_(True)
    mask = dropout_mask(cfg["p"], cfg["seed"], 0, (b, t, c))
    y = x * mask
    dy = randn(gen, *y.shape)
    y.backward(dy)
    kept = float((mask != 0).double().mean())
    assert abs(kept - (1 - cfg["p"])) < 0.15, kept  # the mask really drops
    return {"input/x": x.detach(), "upstream/dy": dy, "output/y": y.detach(),
            "input_grad/x": x.grad.detach()}


def case_block_dropout(mapping, gen, cfg):
    b, t, c = cfg["batch"], cfg["time"], cfg["d_model"]
    module = RefBlockDropout(c, cfg["n_heads"], cfg["mlp_hidden"], cfg["p"], cfg["seeds"])
    return float_layer_case(mapping, "Block", cfg, module, randn(gen, b, t, c), gen)


def case_gpt_dropout(mapping, gen, cfg):
    return case_gpt(mapping, gen, cfg, RefGptDropout(cfg))


def case_gpt(mapping, gen, cfg, module=None):
    if module is None:
        module, layer = make_gpt(cfg)
    else:
        layer = "Gpt"
    check_mapping(mapping, layer, cfg, module)
    init_params(module, gen)
    ids = random_ids(gen, cfg["vocab_size"], cfg["batch"], cfg["time"])
    targets = random_ids(gen, cfg["vocab_size"], cfg["batch"], cfg["time"])
    logits = module(ids)
    loss = mean_cross_entropy(logits, targets)
    loss.backward()
    out = {"input/ids": ids, "input/targets": targets, "output/logits": logits.detach(),
           "output/loss": loss.detach()}
    params_and_grads(module, out)
    return out


def case_optimizer(mapping, gen, cfg):
    """cfg["steps"] steps of torch.optim.Adam/AdamW (single-tensor path) on the whole model,
    one fresh batch per step; records each step's loss, the loss on the first batch after the
    last step, and every final parameter."""
    module, layer = make_gpt(cfg)
    check_mapping(mapping, layer, cfg, module)
    init_params(module, gen)
    out = {f"param/{name}": p.detach().clone() for name, p in module.named_parameters()}
    steps, b, t, v = cfg["steps"], cfg["batch"], cfg["time"], cfg["vocab_size"]
    ids = random_ids(gen, v, steps, b, t)
    targets = random_ids(gen, v, steps, b, t)
    kind = torch.optim.AdamW if cfg["decoupled_weight_decay"] else torch.optim.Adam
    opt = kind(module.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
               eps=cfg["eps"], weight_decay=cfg["weight_decay"], amsgrad=cfg["amsgrad"],
               foreach=False)
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=False)
        loss = mean_cross_entropy(module(ids[step]), targets[step])
        losses.append(loss.detach())
        loss.backward()
        if cfg["max_grad_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg["max_grad_norm"],
                                           foreach=False)
        opt.step()
    with torch.no_grad():
        loss_after = mean_cross_entropy(module(ids[0]), targets[0])
    out.update({"input/ids": ids, "input/targets": targets, "output/losses": torch.stack(losses),
                "output/loss_after": loss_after})
    for name, p in module.named_parameters():
        out[f"final_param/{name}"] = p.detach()
    return out


# --------------------------------------------------------------------------------------
# The two model families, whole: GPT-2 and Llama. Independent float64 modules written out
# with standard torch ops; each is also checked against the Hugging Face `transformers`
# implementation with random weights (GPT2LMHeadModel, LlamaForCausalLM), so that the
# conventions (fused c_attn order, tied lm_head, rotate_half, repeat_kv) are theirs.
# --------------------------------------------------------------------------------------

FAMILY_LN_EPS = 1e-5    # GPT-2's layer_norm_epsilon
FAMILY_RMS_EPS = 1e-6   # our Llama preset's RMSNorm eps (Llama 2 uses 1e-5, Llama 3 1e-5/1e-6)
FAMILY_ROPE_THETA = 10000.0


class Gpt2Attention(nn.Module):
    """Causal multi-head attention with biases on all four projections (GPT-2's c_attn split
    into q, k, v, and c_proj)."""

    def __init__(self, c, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x):
        b, t, c = x.shape
        split = lambda z: z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(ctx.transpose(1, 2).reshape(b, t, c))


class Gpt2Block(nn.Module):
    def __init__(self, c, n_heads, hidden):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c, eps=FAMILY_LN_EPS)
        self.attn = Gpt2Attention(c, n_heads)
        self.ln_2 = nn.LayerNorm(c, eps=FAMILY_LN_EPS)
        self.fc = nn.Linear(c, hidden)
        self.proj = nn.Linear(hidden, c)

    def forward(self, x):
        h = x + self.attn(self.ln_1(x))
        return h + self.proj(F.gelu(self.fc(self.ln_2(h)), approximate="tanh"))


class RefGpt2(nn.Module):
    """GPT-2: learned positions, pre-LN blocks with biased attention and a 4·C GELU(tanh) MLP,
    final LayerNorm, and a bias-free head tied to wte (logits = x·wteᵀ). Dropout is off."""

    def __init__(self, cfg):
        super().__init__()
        c = cfg["d_model"]
        self.wte = nn.Embedding(cfg["vocab_size"], c)
        self.wpe = nn.Embedding(cfg["context"], c)
        self.h = nn.ModuleList(Gpt2Block(c, cfg["n_heads"], cfg["mlp_hidden"])
                               for _ in range(cfg["n_layers"]))
        self.ln_f = nn.LayerNorm(c, eps=FAMILY_LN_EPS)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


class LlamaRmsNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + FAMILY_RMS_EPS))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(x, theta):
    """x (B, H, T, D) rotated at positions 0..T by angles p·theta^(−2i/D), rotate_half style."""
    t, d = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return x * angles.cos() + rotate_half(x) * angles.sin()


class LlamaAttentionRef(nn.Module):
    """Grouped-query attention without biases, rotary on q and k; query head h reads key/value
    head h // (H / H_kv) (Hugging Face's repeat_kv)."""

    def __init__(self, c, n_heads, n_kv_heads):
        super().__init__()
        self.h, self.h_kv, self.d = n_heads, n_kv_heads, c // n_heads
        self.q_proj = nn.Linear(c, n_heads * self.d, bias=False)
        self.k_proj = nn.Linear(c, n_kv_heads * self.d, bias=False)
        self.v_proj = nn.Linear(c, n_kv_heads * self.d, bias=False)
        self.o_proj = nn.Linear(n_heads * self.d, c, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        heads = lambda z, n: z.view(b, t, n, self.d).transpose(1, 2)
        q = rotary(heads(self.q_proj(x), self.h), FAMILY_ROPE_THETA)
        k = rotary(heads(self.k_proj(x), self.h_kv), FAMILY_ROPE_THETA)
        v = heads(self.v_proj(x), self.h_kv)
        rep = self.h // self.h_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(ctx.transpose(1, 2).reshape(b, t, self.h * self.d))


class LlamaBlockRef(nn.Module):
    def __init__(self, c, n_heads, n_kv_heads, hidden):
        super().__init__()
        self.input_layernorm = LlamaRmsNorm(c)
        self.self_attn = LlamaAttentionRef(c, n_heads, n_kv_heads)
        self.post_attention_layernorm = LlamaRmsNorm(c)
        self.gate_proj = nn.Linear(c, hidden, bias=False)
        self.up_proj = nn.Linear(c, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, c, bias=False)

    def forward(self, x):
        h = x + self.self_attn(self.input_layernorm(x))
        z = self.post_attention_layernorm(h)
        return h + self.down_proj(F.silu(self.gate_proj(z)) * self.up_proj(z))


class RefLlama(nn.Module):
    """Llama: token embedding only, pre-RMSNorm blocks with rotary grouped-query attention and
    a SwiGLU MLP, no biases, final RMSNorm, untied bias-free head."""

    def __init__(self, cfg):
        super().__init__()
        c = cfg["d_model"]
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], c)
        self.layers = nn.ModuleList(
            LlamaBlockRef(c, cfg["n_heads"], cfg["n_kv_heads"], cfg["mlp_hidden"])
            for _ in range(cfg["n_layers"]))
        self.norm = LlamaRmsNorm(c)
        self.lm_head = nn.Linear(c, cfg["vocab_size"], bias=False)

    def forward(self, ids):
        x = self.embed_tokens(ids)
        for block in self.layers:
            x = block(x)
        return self.lm_head(self.norm(x))


def init_family_params(module, gen):
    """Seeded values for every parameter (sorted by name): norm gains near 1, LayerNorm
    shifts and biases small, embeddings of unit scale, weights scaled by 1/sqrt(fan_in)."""
    kinds = {}
    for prefix, m in module.named_modules():
        for local, _ in m.named_parameters(recurse=False):
            kinds[join(prefix, local)] = (type(m), local)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            kind, local = kinds[name]
            if kind in (nn.LayerNorm, LlamaRmsNorm) and local == "weight":
                value = randn(gen, *p.shape, scale=0.2) + 1.0
            elif kind is nn.Embedding:
                value = randn(gen, *p.shape)
            elif p.dim() == 1:
                value = randn(gen, *p.shape, scale=0.2)
            else:
                value = randn(gen, *p.shape, scale=1.0 / math.sqrt(p.shape[1]))
            p.copy_(value)


def hf_gpt2(module, cfg):
    """transformers' GPT2LMHeadModel holding `module`'s weights (Conv1D stores (in, out), and
    c_attn is q, k, v side by side)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    conf = GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["context"],
                      n_embd=cfg["d_model"], n_layer=cfg["n_layers"], n_head=cfg["n_heads"],
                      n_inner=cfg["mlp_hidden"], activation_function="gelu_new",
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      layer_norm_epsilon=FAMILY_LN_EPS, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(conf).to(torch.float64).eval()
    hf.config._attn_implementation = "eager"
    with torch.no_grad():
        tr = hf.transformer
        tr.wte.weight.copy_(module.wte.weight)
        tr.wpe.weight.copy_(module.wpe.weight)
        for ours, theirs in zip(module.h, tr.h):
            a = ours.attn
            theirs.attn.c_attn.weight.copy_(torch.cat(
                [a.q_proj.weight.T, a.k_proj.weight.T, a.v_proj.weight.T], dim=1))
            theirs.attn.c_attn.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
            theirs.attn.c_proj.weight.copy_(a.o_proj.weight.T)
            theirs.attn.c_proj.bias.copy_(a.o_proj.bias)
            theirs.mlp.c_fc.weight.copy_(ours.fc.weight.T)
            theirs.mlp.c_fc.bias.copy_(ours.fc.bias)
            theirs.mlp.c_proj.weight.copy_(ours.proj.weight.T)
            theirs.mlp.c_proj.bias.copy_(ours.proj.bias)
            for mine, hfs in ((ours.ln_1, theirs.ln_1), (ours.ln_2, theirs.ln_2)):
                hfs.weight.copy_(mine.weight)
                hfs.bias.copy_(mine.bias)
        tr.ln_f.weight.copy_(module.ln_f.weight)
        tr.ln_f.bias.copy_(module.ln_f.bias)
    assert hf.lm_head.weight.data_ptr() == tr.wte.weight.data_ptr(), "GPT-2's head is not tied"
    return hf


def hf_llama(module, cfg):
    """transformers' LlamaForCausalLM holding `module`'s weights (the same names, one level
    down: model.layers.{i}.self_attn.q_proj, model.layers.{i}.mlp.gate_proj, ...)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    conf = LlamaConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["d_model"],
                       intermediate_size=cfg["mlp_hidden"], num_hidden_layers=cfg["n_layers"],
                       num_attention_heads=cfg["n_heads"], num_key_value_heads=cfg["n_kv_heads"],
                       max_position_embeddings=cfg["context"], rms_norm_eps=FAMILY_RMS_EPS,
                       rope_theta=FAMILY_ROPE_THETA, attention_bias=False, mlp_bias=False,
                       tie_word_embeddings=False, attention_dropout=0.0)
    hf = LlamaForCausalLM(conf).to(torch.float64).eval()
    hf.config._attn_implementation = "eager"
    ours = dict(module.named_parameters())
    with torch.no_grad():
        for name, p in hf.named_parameters():
            mine = name.removeprefix("model.").replace("mlp.", "")
            p.copy_(ours[mine])
    return hf


def check_against_transformers(module, cfg, ids, targets, logits, loss):
    """The reference's logits and loss agree with transformers' (float64 for GPT-2; its Llama
    computes RMSNorm and the rotary tables in float32, so only to float32 accuracy)."""
    hf = hf_gpt2(module, cfg) if cfg["family"] == "gpt2" else hf_llama(module, cfg)
    with torch.no_grad():
        out = hf(input_ids=ids)
    # (HF's `labels` would be shifted inside the model: the loss is taken on our targets.)
    hf_loss = mean_cross_entropy(out.logits, targets)
    tol = 1e-12 if cfg["family"] == "gpt2" else 1e-5
    err = (out.logits - logits).abs().max().item()
    if err > tol * max(1.0, logits.abs().max().item()) or abs(hf_loss - loss).item() > tol:
        raise SystemExit(f"{cfg['family']}: transformers disagrees with the reference by {err}")


def case_family(mapping, gen, cfg):
    """A whole model of a family: logits, loss and every gradient at the initial parameters
    (batch 0), then cfg["steps"] AdamW steps (one batch each) with every step's loss, the
    loss on batch 0 after them and every final parameter."""
    module = RefGpt2(cfg) if cfg["family"] == "gpt2" else RefLlama(cfg)
    layer = {"gpt2": "Gpt2Family", "llama": "LlamaFamily"}[cfg["family"]]
    check_mapping(mapping, layer, cfg, module)
    init_family_params(module, gen)
    steps, b, t, v = cfg["steps"], cfg["batch"], cfg["time"], cfg["vocab_size"]
    ids = random_ids(gen, v, steps, b, t)
    targets = random_ids(gen, v, steps, b, t)
    out = {"input/ids": ids, "input/targets": targets}
    logits = module(ids[0])
    loss = mean_cross_entropy(logits, targets[0])
    loss.backward()
    check_against_transformers(module, cfg, ids[0], targets[0], logits.detach(), loss.detach())
    out.update({"output/logits": logits.detach(), "output/loss": loss.detach()})
    params_and_grads(module, out)
    out = {k: (val.clone() if k.startswith("param") else val) for k, val in out.items()}
    opt = torch.optim.AdamW(module.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                            eps=cfg["eps"], weight_decay=cfg["weight_decay"], foreach=False)
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=False)
        step_loss = mean_cross_entropy(module(ids[step]), targets[step])
        losses.append(step_loss.detach())
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg["max_grad_norm"], foreach=False)
        opt.step()
    with torch.no_grad():
        out["output/loss_after"] = mean_cross_entropy(module(ids[0]), targets[0])
    out["output/losses"] = torch.stack(losses)
    for name, p in module.named_parameters():
        out[f"final_param/{name}"] = p.detach()
    return out


FAMILY_ADAMW = {"steps": 10, "lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
                "weight_decay": 0.1, "max_grad_norm": 1.0}
# Whole models of the two families (GptConfig::gpt2 / GptConfig::llama in Rust): logits, loss,
# every gradient, and ten AdamW steps with clipping (tests/parity.rs, kind "family").
FAMILY_CASES = [
    ("family_gpt2", "family", 127,
     dict(FAMILY_ADAMW, family="gpt2", vocab_size=13, d_model=12, n_heads=3, n_layers=2,
          context=8, mlp_hidden=48, batch=2, time=7)),
    ("family_llama", "family", 128,
     dict(FAMILY_ADAMW, family="llama", vocab_size=13, d_model=16, n_heads=4, n_kv_heads=2,
          n_layers=2, context=8, mlp_hidden=24, batch=2, time=7)),
]


GPT_SMALL = {"vocab_size": 13, "d_model": 15, "n_heads": 3, "n_layers": 2, "context": 8,
             "mlp_hidden": 24}

# (file stem, kind, seed, config). Shapes cover B = 1, T = 1, T < context, T = context, head
# sizes 5 and 3 (not powers of two), vocabularies 13, 11, 7 (not powers of two).
CASES = [
    ("linear", "linear", 101, {"batch": 2, "time": 3, "c_in": 5, "c_out": 7, "bias": True}),
    ("linear_b1_t1_nobias", "linear", 102,
     {"batch": 1, "time": 1, "c_in": 6, "c_out": 3, "bias": False}),
    ("embedding", "embedding", 103,
     {"batch": 2, "time": 5, "vocab_size": 13, "d_model": 6, "context": 8}),
    ("embedding_b1_t1", "embedding", 104,
     {"batch": 1, "time": 1, "vocab_size": 5, "d_model": 4, "context": 3}),
    ("layer_norm", "layer_norm", 105,
     {"batch": 2, "time": 3, "d_model": 6, "x_scale": 2.0, "x_shift": 0.5}),
    ("layer_norm_large", "layer_norm", 106,
     {"batch": 1, "time": 4, "d_model": 9, "x_scale": 50.0, "x_shift": 1000.0}),
    ("gelu", "gelu", 107, {"batch": 2, "time": 3, "d_model": 8}),
    ("attention_core_1head", "attention_core", 108,
     {"batch": 2, "time": 4, "d_model": 5, "n_heads": 1}),
    ("attention_core_3heads", "attention_core", 109,
     {"batch": 2, "time": 5, "d_model": 15, "n_heads": 3}),
    ("attention_core_b1_t1", "attention_core", 110,
     {"batch": 1, "time": 1, "d_model": 6, "n_heads": 2}),
    ("attention_1head", "attention", 111, {"batch": 2, "time": 4, "d_model": 5, "n_heads": 1}),
    ("attention_3heads", "attention", 112, {"batch": 2, "time": 6, "d_model": 15, "n_heads": 3}),
    # Llama-style attention (q/k/v/o_proj, repeat_kv, rotate_half) at odd T: MHA with biases,
    # GQA (6 heads on 2 key/value heads), MQA, rotary without and with GQA. Head sizes 3, 5
    # (odd, no rotation) and 4, 6 (rotary needs an even size).
    ("attention_mha_bias", "llama_attention", 124,
     {"batch": 2, "time": 5, "d_model": 15, "n_heads": 3, "n_kv_heads": 3, "bias": True,
      "rope_theta": None}),
    ("attention_gqa", "llama_attention", 125,
     {"batch": 2, "time": 7, "d_model": 18, "n_heads": 6, "n_kv_heads": 2, "bias": False,
      "rope_theta": None}),
    ("attention_mqa", "llama_attention", 126,
     {"batch": 1, "time": 5, "d_model": 20, "n_heads": 4, "n_kv_heads": 1, "bias": True,
      "rope_theta": None}),
    ("attention_rotary", "llama_attention", 127,
     {"batch": 2, "time": 7, "d_model": 12, "n_heads": 3, "n_kv_heads": 3, "bias": False,
      "rope_theta": 10000.0}),
    ("attention_dropout_rotary_gqa", "llama_attention", 129,
     {"batch": 2, "time": 6, "d_model": 16, "n_heads": 4, "n_kv_heads": 2, "bias": True,
      "rope_theta": 10000.0, "dropout_p": 0.25, "dropout_seed": 77}),
    ("attention_rotary_gqa", "llama_attention", 128,
     {"batch": 2, "time": 9, "d_model": 36, "n_heads": 6, "n_kv_heads": 2, "bias": True,
      "rope_theta": 100.0}),
    ("mlp", "mlp", 113, {"batch": 2, "time": 3, "d_model": 6, "mlp_hidden": 10}),
    ("block", "block", 114,
     {"batch": 2, "time": 4, "d_model": 15, "n_heads": 3, "mlp_hidden": 24}),
    ("block_b1_t1", "block", 115,
     {"batch": 1, "time": 1, "d_model": 6, "n_heads": 2, "mlp_hidden": 12}),
    ("cross_entropy", "cross_entropy", 116,
     {"batch": 2, "time": 4, "vocab_size": 13, "logit_scale": 2.0}),
    ("cross_entropy_large_logits", "cross_entropy", 117,
     {"batch": 1, "time": 3, "vocab_size": 7, "logit_scale": 40.0}),
    ("gpt_ln_f", "gpt", 118, dict(GPT_SMALL, final_norm=True, batch=2, time=5)),
    ("gpt_no_ln_f", "gpt", 119,
     {"vocab_size": 11, "d_model": 12, "n_heads": 4, "n_layers": 2, "context": 6,
      "mlp_hidden": 20, "final_norm": False, "batch": 3, "time": 6}),
    ("gpt_b1_t1", "gpt", 120,
     {"vocab_size": 7, "d_model": 10, "n_heads": 2, "n_layers": 1, "context": 4,
      "mlp_hidden": 16, "final_norm": True, "batch": 1, "time": 1}),
    ("dropout", "dropout", 124, {"batch": 2, "time": 3, "d_model": 7, "p": 0.3, "seed": 91}),
    ("block_dropout", "block_dropout", 125,
     {"batch": 2, "time": 4, "d_model": 15, "n_heads": 3, "mlp_hidden": 24, "p": 0.25,
      "seeds": [17, 18]}),
    ("gpt_dropout", "gpt_dropout", 126,
     dict(GPT_SMALL, final_norm=True, batch=2, time=5, embd_pdrop=0.2, resid_pdrop=0.15,
          seeds=[1001, 1002, 1003, 1004, 1005])),
    ("adam_10_steps", "optimizer", 121,
     dict(GPT_SMALL, final_norm=True, batch=2, time=6, steps=10, lr=1e-2, beta1=0.9,
          beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
          amsgrad=False, max_grad_norm=None)),
    ("adamw_10_steps", "optimizer", 122,
     dict(GPT_SMALL, final_norm=False, batch=2, time=8, steps=10, lr=1e-2, beta1=0.9,
          beta2=0.95, eps=1e-8, weight_decay=0.1, decoupled_weight_decay=True,
          amsgrad=False, max_grad_norm=None)),
    ("adam_l2_amsgrad_clip_10_steps", "optimizer", 123,
     dict(GPT_SMALL, final_norm=True, batch=3, time=4, steps=10, lr=3e-2, beta1=0.8,
          beta2=0.99, eps=1e-6, weight_decay=0.05, decoupled_weight_decay=False,
          amsgrad=True, max_grad_norm=0.5)),
    ("rms_norm", "rms_norm", 124,
     {"batch": 2, "time": 3, "d_model": 7, "x_scale": 2.0, "x_shift": 0.0, "eps": 1e-5}),
    ("rms_norm_large", "rms_norm", 125,
     {"batch": 1, "time": 4, "d_model": 9, "x_scale": 50.0, "x_shift": 1000.0, "eps": 1e-6}),
    ("swiglu", "swiglu", 126,
     {"batch": 2, "time": 3, "d_model": 6, "mlp_hidden": 11, "x_scale": 2.0}),
    ("swiglu_b1_t1", "swiglu", 127,
     {"batch": 1, "time": 1, "d_model": 5, "mlp_hidden": 7, "x_scale": 4.0}),
    # Tied head (lm_head.weight is wte.weight): the table's gradient sums both uses, and
    # AdamW updates it once per step.
    ("gpt_tied", "gpt", 124, dict(GPT_SMALL, final_norm=True, tied_head=True, head_bias=False,
                                  batch=2, time=5)),
    ("gpt_tied_bias_no_ln_f", "gpt", 125,
     {"vocab_size": 11, "d_model": 12, "n_heads": 4, "n_layers": 1, "context": 6,
      "mlp_hidden": 20, "final_norm": False, "tied_head": True, "head_bias": True,
      "batch": 3, "time": 4}),
    ("adamw_tied_10_steps", "optimizer", 126,
     dict(GPT_SMALL, final_norm=True, tied_head=True, head_bias=False, batch=2, time=6,
          steps=10, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
          decoupled_weight_decay=True, amsgrad=False, max_grad_norm=1.0)),
] + FAMILY_CASES

RUNNERS = {
    "linear": case_linear, "embedding": case_embedding, "layer_norm": case_layer_norm,
    "gelu": case_gelu, "attention_core": case_attention_core, "attention": case_attention,
    "mlp": case_mlp, "block": case_block, "cross_entropy": case_cross_entropy,
    "gpt": case_gpt, "optimizer": case_optimizer, "rms_norm": case_rms_norm,
    "swiglu": case_swiglu, "dropout": case_dropout,
    "block_dropout": case_block_dropout, "gpt_dropout": case_gpt_dropout,
    "llama_attention": case_llama_attention, "family": case_family,
}

# --------------------------------------------------------------------------------------
# safetensors, written by hand: u64 LE header length, JSON header, raw little-endian data.
# --------------------------------------------------------------------------------------

DTYPES = {torch.float64: ("F64", "<f8"), torch.int64: ("I64", "<i8")}


def safetensors_bytes(tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        dtype, np_dtype = DTYPES[t.dtype]
        blob = np.ascontiguousarray(t.numpy()).astype(np_dtype, copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad so the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def build(stem, kind, seed, config, mapping):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tensors = RUNNERS[kind](mapping, gen, config)
    metadata = {"case": stem, "kind": kind, "seed": str(seed),
                "config": json.dumps(config, sort_keys=True, separators=(",", ":")),
                "generator": "tests/parity/generate.py",
                "reference": f"torch {torch.__version__.split('+')[0]}, float64"}
    return safetensors_bytes(tensors, metadata)


def all_fixtures():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float64)
    mapping = load_mapping()
    files = {}
    for stem, kind, seed, config in CASES:
        files[f"{stem}.safetensors"] = build(stem, kind, seed, config, mapping)
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed fixtures instead of writing")
    parser.add_argument("--out", default=FIXTURES, help="output directory")
    args = parser.parse_args()
    files = all_fixtures()
    stale = []
    if not args.check:
        os.makedirs(args.out, exist_ok=True)
    for name, data in sorted(files.items()):
        path = os.path.join(args.out, name)
        digest = hashlib.sha256(data).hexdigest()
        if args.check:
            with open(path, "rb") as f:
                same = f.read() == data
            stale += [] if same else [name]
            print(f"{'ok   ' if same else 'DIFF '} {digest}  {name}")
        else:
            with open(path, "wb") as f:
                f.write(data)
            print(f"{digest}  {name}  ({len(data)} bytes)")
    if stale:
        sys.exit(f"{len(stale)} fixture(s) differ: {', '.join(stale)}")


if __name__ == "__main__":
    main()
