//! `Adam` against PyTorch: the first five steps of `torch.optim.Adam` / `AdamW` (with and
//! without AMSGrad, L2 and decoupled weight decay, a no-decay group, clipping and a warmup +
//! cosine schedule) on fixed float64 tensors, to 1e-12.
//!
//! The numbers are in `tests/reference/adam_reference.txt`, written by
//! `tests/reference/adam_reference.py` (see its header for how to regenerate them).

use std::collections::BTreeMap;

use baregpt::optim::{DecayFilter, LrSchedule};
use baregpt::param::Param;
use baregpt::{Adam, AdamConfig};
use common::NamedParams;
use ndarray::{ArrayD, IxDyn};

mod common;

const REFERENCE: &str = include_str!("reference/adam_reference.txt");
/// Largest allowed |rust − torch| for parameter values (they are of order 1).
const TOL: f64 = 1e-12;

/// One case of the reference file.
#[derive(Debug, Default)]
struct Case {
    name: String,
    config: BTreeMap<String, String>,
    /// (name, shape, initial values), in the file's order.
    params: Vec<(String, Vec<usize>, Vec<f64>)>,
    /// Per step: the gradients by name, the optional clip norm, the values after the step.
    steps: Vec<Step>,
    /// `(kind, name) -> values` after the last step; kind is m, v or v_max.
    state: BTreeMap<(String, String), Vec<f64>>,
}

#[derive(Debug, Default)]
struct Step {
    grads: BTreeMap<String, Vec<f64>>,
    norm: Option<f64>,
    values: BTreeMap<String, Vec<f64>>,
}

fn floats<'a>(fields: impl Iterator<Item = &'a str>) -> Vec<f64> {
    fields
        .map(|x| {
            x.parse::<f64>()
                .unwrap_or_else(|e| panic!("bad float {x:?}: {e}"))
        })
        .collect()
}

fn parse(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut case = Case::default();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut f = line.split_whitespace();
        let key = f.next().unwrap();
        match key {
            "torch" => {}
            "case" => case.name = f.next().unwrap().to_owned(),
            "config" => {
                for kv in f {
                    let (k, v) = kv.split_once('=').unwrap();
                    case.config.insert(k.to_owned(), v.to_owned());
                }
            }
            "param" => {
                let name = f.next().unwrap().to_owned();
                let shape = f
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|d| d.parse().unwrap())
                    .collect();
                case.params.push((name, shape, Vec::new()));
            }
            "init" => {
                let name = f.next().unwrap();
                let entry = case.params.iter_mut().find(|p| p.0 == name).unwrap();
                entry.2 = floats(f);
            }
            "step" => case.steps.push(Step::default()),
            "grad" | "value" => {
                let name = f.next().unwrap().to_owned();
                let step = case.steps.last_mut().unwrap();
                let map = if key == "grad" {
                    &mut step.grads
                } else {
                    &mut step.values
                };
                map.insert(name, floats(f));
            }
            "norm" => case.steps.last_mut().unwrap().norm = Some(floats(f)[0]),
            "state" => {
                let kind = f.next().unwrap().to_owned();
                let name = f.next().unwrap().to_owned();
                case.state.insert((kind, name), floats(f));
            }
            "end" => cases.push(std::mem::take(&mut case)),
            other => panic!("unknown record {other:?}"),
        }
    }
    cases
}

impl Case {
    fn get(&self, key: &str) -> &str {
        self.config
            .get(key)
            .unwrap_or_else(|| panic!("{}: no {key}", self.name))
    }

    fn num(&self, key: &str) -> f64 {
        self.get(key).parse().unwrap()
    }

    fn config(&self) -> AdamConfig {
        let total: u64 = self.get("total").parse().unwrap();
        let schedule = if total > 0 {
            let warmup = self.get("warmup").parse().unwrap();
            LrSchedule::warmup_cosine(warmup, total, self.num("floor")).unwrap()
        } else {
            LrSchedule::constant()
        };
        AdamConfig {
            lr: self.num("lr"),
            beta1: self.num("beta1"),
            beta2: self.num("beta2"),
            eps: self.num("eps"),
            weight_decay: self.num("weight_decay"),
            decoupled_weight_decay: self.get("decoupled") == "1",
            amsgrad: self.get("amsgrad") == "1",
            max_grad_norm: match self.get("max_grad_norm") {
                "none" => None,
                x => Some(x.parse().unwrap()),
            },
            schedule,
        }
    }

    fn no_decay(&self) -> Vec<String> {
        match self.get("no_decay") {
            "-" => Vec::new(),
            list => list.split(',').map(str::to_owned).collect(),
        }
    }
}

/// The largest deviations seen, over all cases.
#[derive(Debug, Default)]
struct Deviation {
    value_abs: f64,
    state_rel: f64,
    norm_abs: f64,
    compared: usize,
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Runs one case through `Adam::step` (named parameters) and `Adam::step_slices` and
/// compares both with torch after every step.
fn run_case(case: &Case, dev: &mut Deviation) {
    let excluded = case.no_decay();
    let filter = {
        let excluded = excluded.clone();
        DecayFilter::from_fn(move |name| !excluded.iter().any(|e| e == name))
    };
    let mut adam = Adam::<f64>::new(case.config())
        .unwrap()
        .with_decay_filter(filter);
    let mut model = NamedParams(
        case.params
            .iter()
            .map(|(name, shape, init)| {
                let value = ArrayD::from_shape_vec(IxDyn(shape), init.clone()).unwrap();
                (name.clone(), Param::new(value))
            })
            .collect(),
    );
    // The slice path names its parameters "0", "1", …; exclude by index.
    let slice_excluded: Vec<String> = case
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| excluded.contains(&p.0))
        .map(|(i, _)| i.to_string())
        .collect();
    let mut slice_adam =
        Adam::<f64>::new(case.config())
            .unwrap()
            .with_decay_filter(DecayFilter::from_fn(move |name| {
                !slice_excluded.iter().any(|e| e == name)
            }));
    let mut slice_values: Vec<Vec<f64>> = case.params.iter().map(|p| p.2.clone()).collect();

    for (t, step) in case.steps.iter().enumerate() {
        for (name, p) in &mut model.0 {
            let g = &step.grads[name.as_str()];
            p.grad = ArrayD::from_shape_vec(p.value.raw_dim(), g.clone()).unwrap();
        }
        let info = adam.step(&mut model).unwrap();
        assert_eq!(info.step, t as u64 + 1);

        let grads: Vec<&[f64]> = case
            .params
            .iter()
            .map(|p| step.grads[p.0.as_str()].as_slice())
            .collect();
        let mut pairs: Vec<(&mut [f64], &[f64])> = slice_values
            .iter_mut()
            .zip(&grads)
            .map(|(v, g)| (v.as_mut_slice(), *g))
            .collect();
        let slice_info = slice_adam.step_slices(&mut pairs).unwrap();
        assert_eq!(info, slice_info, "{}: step info differs by path", case.name);

        if let Some(norm) = step.norm {
            let d = (info.grad_norm - norm).abs();
            assert!(
                d <= TOL,
                "{} step {}: norm {} vs torch {norm}",
                case.name,
                t + 1,
                info.grad_norm
            );
            assert!(info.clipped, "{}: the clip case must clip", case.name);
            dev.norm_abs = dev.norm_abs.max(d);
        }
        for (i, (name, p)) in model.0.iter().enumerate() {
            let want = &step.values[name.as_str()];
            let got = p.value.as_slice().unwrap();
            let d = max_abs_diff(got, want);
            assert!(
                d <= TOL,
                "{} step {} param {name}: max |rust − torch| = {d:e}\n rust {got:?}\ntorch {want:?}",
                case.name,
                t + 1
            );
            assert_eq!(
                got,
                &slice_values[i][..],
                "{}: model and slice paths differ",
                case.name
            );
            dev.value_abs = dev.value_abs.max(d);
            dev.compared += got.len();
        }
    }
    compare_state(case, &adam, dev);
}

/// Compares m, v and v_max after the last step, relative to their magnitude (v of the
/// small-gradient parameter is about 1e-17).
fn compare_state(case: &Case, adam: &Adam<f64>, dev: &mut Deviation) {
    let state = adam.state();
    assert_eq!(state.step, case.steps.len() as u64);
    assert_eq!(state.params.len(), case.params.len());
    for ((kind, name), want) in &case.state {
        let s = &state.params[name.as_str()];
        let got = match kind.as_str() {
            "m" => &s.m,
            "v" => &s.v,
            "v_max" => s.v_max.as_ref().expect("amsgrad state"),
            other => panic!("unknown state {other}"),
        };
        let scale = want
            .iter()
            .fold(0.0f64, |a, x| a.max(x.abs()))
            .max(f64::MIN_POSITIVE);
        let rel = max_abs_diff(got.as_slice().unwrap(), want) / scale;
        assert!(
            rel <= TOL,
            "{} state {kind} {name}: relative deviation {rel:e}",
            case.name
        );
        dev.state_rel = dev.state_rel.max(rel);
    }
    let amsgrad = case.get("amsgrad") == "1";
    assert_eq!(
        case.state.keys().filter(|k| k.0 == "v_max").count(),
        if amsgrad { case.params.len() } else { 0 }
    );
}

#[test]
fn matches_pytorch_adam_and_adamw_to_1e_12() {
    let cases = parse(REFERENCE);
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "adam",
            "adam_amsgrad",
            "adam_l2",
            "adam_l2_amsgrad_betas",
            "adamw",
            "adamw_amsgrad",
            "adamw_no_decay_b",
            "adamw_clip",
            "adamw_warmup_cosine"
        ]
    );
    let mut dev = Deviation::default();
    for case in &cases {
        assert_eq!(case.steps.len(), 5, "{}", case.name);
        run_case(case, &mut dev);
    }
    println!(
        "max |rust − torch| over {} parameter values: {:e}; max relative state deviation: {:e}; \
         max |norm − torch norm|: {:e}",
        dev.compared, dev.value_abs, dev.state_rel, dev.norm_abs
    );
    assert!(dev.compared >= 9 * 5 * 22);
}

#[test]
fn the_cases_differ_from_each_other() {
    // Guards against a reference file in which, say, AMSGrad or weight decay changed
    // nothing: every pair of cases must end at different parameter values.
    let cases = parse(REFERENCE);
    let finals: Vec<Vec<f64>> = cases
        .iter()
        .map(|c| {
            let last = c.steps.last().unwrap();
            c.params
                .iter()
                .flat_map(|p| last.values[p.0.as_str()].clone())
                .collect()
        })
        .collect();
    for i in 0..finals.len() {
        for j in i + 1..finals.len() {
            let d = max_abs_diff(&finals[i], &finals[j]);
            assert!(
                d > 1e-9,
                "{} and {} end at the same values",
                cases[i].name,
                cases[j].name
            );
        }
    }
}
