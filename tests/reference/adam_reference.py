#!/usr/bin/env python3
"""Reference numbers for `tests/adam_reference.rs`, computed with PyTorch in float64.

Run from the repository root (needs `torch`; no GPU):

    python3 tests/reference/adam_reference.py > tests/reference/adam_reference.txt

The output is deterministic: parameters and gradients come from closed formulas (sines and
cosines of the element index, parameter index and step), nothing is random. The Rust test
reads the text file only; Python is not needed to run the tests.

Three parameters are stepped together, chosen to exercise every branch of the update rule:

* `w` (3, 4): gradients of order 1;
* `b` (4,):   gradients of order 1e-7, comparable to eps, with element 0 exactly zero;
* `g` (2, 3): gradients shrinking tenfold each step, so that v decreases and AMSGrad's
              running maximum differs from v.

Each case runs 5 steps of `torch.optim.Adam` or `torch.optim.AdamW` (single-tensor path,
`foreach=False`), optionally with `clip_grad_norm_` before each step, a LambdaLR warmup +
cosine schedule, or a second parameter group without weight decay.

File format (one record per line, whitespace-separated, floats in Python's shortest
round-trip `repr`):

    torch <version>
    case <name>
    config lr=<f> beta1=<f> beta2=<f> eps=<f> weight_decay=<f> decoupled=<0|1> amsgrad=<0|1>
           max_grad_norm=<f|none> no_decay=<name,...|-> warmup=<n> total=<n> floor=<f>
    param <name> <d0,d1,...>               shape
    init <name> <values...>                initial value, row-major
    step <t>
    grad <name> <values...>                gradient given to step t (before clipping)
    norm <f>                               global gradient norm returned by clip_grad_norm_
    value <name> <values...>               parameter after step t
    state <m|v|v_max> <name> <values...>   optimizer state after the last step
    end
"""

import math
import sys

import torch

STEPS = 5
SHAPES = [("w", (3, 4)), ("b", (4,)), ("g", (2, 3))]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def init_value(k, i):
    """Initial value of element i of parameter k."""
    return math.sin(0.37 * (i + 1) + 1.1 * k) * (0.5 + 0.25 * k)


def grad_value(k, i, step):
    """Gradient of element i of parameter k at step (1-based)."""
    base = math.cos(0.91 * (i + 1) + 0.53 * step + 0.7 * k)
    name = SHAPES[k][0]
    if name == "w":
        return base
    if name == "b":
        return 0.0 if i == 0 else 1e-7 * base
    return base * 10.0 ** (-(step - 1))  # "g"


def warmup_cosine(t, warmup, total, floor):
    """The LR multiplier at step t (1-based); the same definition as LrSchedule."""
    t = max(t, 1)
    if t <= warmup:
        return 1.0 if t >= warmup else t / warmup
    if t >= total:
        return floor
    progress = (t - warmup) / (total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


CASES = [
    dict(name="adam", opt="Adam", lr=1e-2),
    dict(name="adam_amsgrad", opt="Adam", lr=1e-2, amsgrad=True),
    dict(name="adam_l2", opt="Adam", lr=1e-2, weight_decay=0.1),
    dict(
        name="adam_l2_amsgrad_betas",
        opt="Adam",
        lr=2e-2,
        betas=(0.8, 0.99),
        eps=1e-6,
        weight_decay=0.05,
        amsgrad=True,
    ),
    dict(name="adamw", opt="AdamW", lr=1e-2, weight_decay=0.1),
    dict(name="adamw_amsgrad", opt="AdamW", lr=1e-2, weight_decay=0.1, amsgrad=True),
    dict(name="adamw_no_decay_b", opt="AdamW", lr=1e-2, weight_decay=0.1, no_decay=["b"]),
    dict(name="adamw_clip", opt="AdamW", lr=1e-2, weight_decay=0.01, max_grad_norm=1.0),
    dict(
        name="adamw_warmup_cosine",
        opt="AdamW",
        lr=3e-2,
        weight_decay=0.1,
        schedule=(2, 5, 0.1),
    ),
]


def fmt(values):
    return " ".join(repr(float(x)) for x in values)


def run_case(case, out):
    torch.manual_seed(0)  # not used for values; keeps any library randomness fixed
    lr = case["lr"]
    beta1, beta2 = case.get("betas", (0.9, 0.999))
    eps = case.get("eps", 1e-8)
    wd = case.get("weight_decay", 0.0)
    amsgrad = case.get("amsgrad", False)
    decoupled = case["opt"] == "AdamW"
    max_norm = case.get("max_grad_norm")
    no_decay = case.get("no_decay", [])
    warmup, total, floor = case.get("schedule", (0, 0, 1.0))

    params = {}
    for k, (name, shape) in enumerate(SHAPES):
        values = [init_value(k, i) for i in range(numel(shape))]
        params[name] = torch.tensor(values, dtype=torch.float64).reshape(shape)
        params[name].requires_grad_(True)

    groups = [
        {"params": [params[n] for n, _ in SHAPES if n not in no_decay], "weight_decay": wd},
    ]
    if no_decay:
        groups.append(
            {"params": [params[n] for n, _ in SHAPES if n in no_decay], "weight_decay": 0.0}
        )
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls(groups, lr=lr, betas=(beta1, beta2), eps=eps, amsgrad=amsgrad, foreach=False)
    sched = None
    if total > 0:
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: warmup_cosine(e + 1, warmup, total, floor)
        )

    out.write(f"case {case['name']}\n")
    out.write(
        f"config lr={lr!r} beta1={beta1!r} beta2={beta2!r} eps={eps!r} weight_decay={wd!r} "
        f"decoupled={int(decoupled)} amsgrad={int(amsgrad)} "
        f"max_grad_norm={'none' if max_norm is None else repr(max_norm)} "
        f"no_decay={','.join(no_decay) or '-'} warmup={warmup} total={total} floor={floor!r}\n"
    )
    for name, shape in SHAPES:
        out.write(f"param {name} {','.join(str(d) for d in shape)}\n")
        out.write(f"init {name} {fmt(params[name].detach().reshape(-1).tolist())}\n")

    for step in range(1, STEPS + 1):
        out.write(f"step {step}\n")
        for k, (name, shape) in enumerate(SHAPES):
            g = [grad_value(k, i, step) for i in range(numel(shape))]
            params[name].grad = torch.tensor(g, dtype=torch.float64).reshape(shape)
            out.write(f"grad {name} {fmt(g)}\n")
        if max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_([params[n] for n, _ in SHAPES], max_norm)
            out.write(f"norm {float(norm)!r}\n")
        opt.step()
        if sched is not None:
            sched.step()
        for name, _ in SHAPES:
            out.write(f"value {name} {fmt(params[name].detach().reshape(-1).tolist())}\n")

    for name, _ in SHAPES:
        state = opt.state[params[name]]
        assert float(state["step"]) == STEPS
        out.write(f"state m {name} {fmt(state['exp_avg'].reshape(-1).tolist())}\n")
        out.write(f"state v {name} {fmt(state['exp_avg_sq'].reshape(-1).tolist())}\n")
        if amsgrad:
            out.write(
                f"state v_max {name} {fmt(state['max_exp_avg_sq'].reshape(-1).tolist())}\n"
            )
            # The data must make AMSGrad matter, or the amsgrad cases test nothing new.
            if name == "g":
                assert not torch.equal(state["max_exp_avg_sq"], state["exp_avg_sq"])
    out.write("end\n")


def main():
    torch.set_default_dtype(torch.float64)
    out = sys.stdout
    out.write(f"# generated by tests/reference/adam_reference.py; do not edit by hand\n")
    out.write(f"torch {torch.__version__}\n")
    for case in CASES:
        run_case(case, out)


if __name__ == "__main__":
    main()
