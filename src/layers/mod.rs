//! Owning layers built on the [`kernels`](crate::kernels): parameters, gradients, caches,
//! names and errors.
//!
//! Every float layer maps `(B, T, C_in)` to `(B, T, C_out)` and implements
//! [`Layer<F>`](crate::Layer); [`Embedding`] takes token ids `(B, T)` and implements
//! `Layer<F, Array2<usize>>`. [`Block`] and [`Sequential`] are assembled from boxed layers.

mod attention;
mod block;
mod dropout;
mod embedding;
mod gelu;
pub(crate) mod init;
mod layer_norm;
mod linear;
mod mlp;
mod rms_norm;
mod sequential;
mod swiglu;
mod tied_head;

pub use attention::{Attention, AttentionConfig, AttentionKernel};
pub use block::Block;
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use gelu::Gelu;
pub use init::{glorot_uniform, normal};
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use mlp::Mlp;
pub use rms_norm::RmsNorm;
pub use sequential::Sequential;
pub use swiglu::SwiGlu;
pub use tied_head::TiedHead;
