//! # baregpt
//!
//! GPT layers whose backward passes you can read, call and check.
//!
//! `baregpt` is a small GPT (token and position embeddings, pre-LN transformer blocks with
//! causal multi-head attention and a GELU MLP, a linear head and softmax cross-entropy) in
//! which every backward pass is written by hand, documented with its derivation, and
//! verified by a public finite-difference [`gradcheck`]er. There is no autograd tape: you
//! call `forward` and `backward` yourself.
//!
//! ## Shape conventions
//!
//! * Activations at every layer boundary are `(B, T, C)`: batch, time (sequence position),
//!   channels. Token ids and targets are `(B, T)` of `usize`.
//! * Position-wise kernels work on rows `(N, C)` with `N = B·T`.
//! * Weight matrices are stored input-major, `(C_in, C_out)`, so a linear map is `x·W + b`.
//!
//! ## The contract of a layer
//!
//! [`Layer::forward`] caches what the backward needs; [`Layer::infer`] computes the same
//! output from `&self` without caching; [`Layer::backward`] takes `dL/dy`, **adds** into the
//! parameter gradients and returns `dL/dx`. Gradients accumulate until
//! [`Params::zero_grad`]. Parameters are listed once per layer ([`params!`]) and reached by
//! dotted name (`blocks.0.attn.w_q`); the optimizer, the checker and checkpoints take
//! anything that implements [`Params`], boxed layers included.
//!
//! ## Example: a block by hand, then a gradient check
//!
//! ```
//! use baregpt::{gradcheck, layers::Block, prelude::*};
//! use ndarray::Array3;
//! use rand::SeedableRng;
//!
//! let mut rng = rand::rngs::StdRng::seed_from_u64(7);
//! let mut block: Box<dyn Layer<f64>> = Box::new(Block::new(8, 2, 32, &mut rng)?);
//! let x = Array3::from_shape_fn((2, 3, 8), |(b, t, c)| ((b + 3 * t + 5 * c) as f64).cos());
//! let y = block.forward(&x)?;                          // (2, 3, 8), cached for backward
//! let dx = block.backward(&Array3::ones(y.raw_dim()))?; // dL/dx; grads accumulated
//! assert_eq!(dx.shape(), x.shape());
//!
//! let report = gradcheck::check_layer(&mut block, &x, &Default::default())?;
//! assert!(report.passed(), "{report}");
//! # Ok::<(), baregpt::Error>(())
//! ```
//!
//! ## Modules
//!
//! * [`kernels`]: pure forward/backward functions over array views (the derivations).
//! * [`layers`]: owning layers built on the kernels; [`Gpt`] and [`CrossEntropy`] on top.
//! * [`gradcheck`]: the finite-difference checker.
//! * [`optim`]: the [`Adam`] optimizer, gradient clipping and learning-rate schedules.
//! * [`param`]: parameters, the [`Params`] trait, named access and [`param::ParamMap`].
//! * [`layer`]: the [`Layer`] trait and what a layer is written with (caches, row
//!   helpers, the inference state and key/value cache).
//! * [`checkpoint`]: safetensors save/load of a model, its vocabulary and optimizer state.
//! * [`generate`]: key/value-cache generation with temperature and top-k sampling.
//! * [`data`]: a character vocabulary, a text data set and the embedded addition task.
//! * [`limits`]: the per-allocation size limit every size is checked against.
#![cfg_attr(
    feature = "hf",
    doc = "* [`hf`]: Hugging Face GPT-2 and Llama folders and `tokenizer.json` (feature `hf`)."
)]
#![cfg_attr(
    feature = "proptest",
    doc = "* [`strategies`]: proptest strategies for shapes and inputs."
)]
#![deny(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod exec;
pub mod generate;
pub mod gpt;
pub mod gradcheck;
#[cfg(feature = "hf")]
pub mod hf;
pub mod kernels;
pub mod layer;
pub mod layers;
pub mod limits;
pub mod loss;
pub mod optim;
pub mod param;
pub mod scalar;
#[cfg(feature = "proptest")]
pub mod strategies;

pub use error::{Error, Result};
pub use exec::{num_threads, set_num_threads};
pub use gpt::{DropoutConfig, Gpt, GptConfig};
pub use layer::{Layer, LayerInput};
pub use loss::CrossEntropy;
pub use optim::{Adam, AdamConfig, AdamState, DecayFilter, LrSchedule};
pub use param::Params;
pub use scalar::Float;

/// The traits a user of the crate calls methods of: `use baregpt::prelude::*;`.
pub mod prelude {
    pub use crate::layer::{Layer, LayerInput};
    pub use crate::param::Params;
    pub use crate::scalar::Float;
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
