//! Pure forward and backward functions over array views, with no state.
//!
//! These are the backward functions users call directly. Each forward sits beside its
//! backward, and the backward's doc comment carries its derivation, with the terms tagged
//! in the code. The [`layers`](crate::layers) own parameters and caches and call into these.
//!
//! Position-wise kernels take `(N, C)` with `N = B·T`; the others say their shapes.

pub mod attention;
pub mod cross_entropy;
pub(crate) mod elementwise;
pub mod embedding;
pub(crate) mod fast_math;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub(crate) mod matmul;
pub(crate) mod reduce;
pub mod softmax;

pub use attention::{attention_backward, attention_forward};
pub use cross_entropy::{cross_entropy_backward, cross_entropy_forward};
pub use embedding::{embedding_backward, embedding_forward};
pub use gelu::{gelu_backward, gelu_forward};
pub use layer_norm::{LayerNormCache, layer_norm_backward, layer_norm_forward};
pub use linear::{linear_backward, linear_forward};
pub use softmax::{causal_softmax_forward, softmax_backward_in_place};
