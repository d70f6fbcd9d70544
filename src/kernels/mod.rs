//! Pure forward and backward functions over array views, with no state.
//!
//! These are the backward functions users call directly. Each forward sits beside its
//! backward, and the backward's doc comment carries its derivation, with the terms tagged
//! in the code. The [`layers`](crate::layers) own parameters and caches and call into these.
//!
//! `linear`, `layer_norm` and `rms_norm` treat every position alike, so they take rows
//! `(N, C)` with `N = B·T` (and `gelu`, `silu` and `swiglu`, element-wise, any shape), while
//! `embedding` (ids `(B, T)` → `(B, T, C)`), `attention` (`(B, T, C)`) and `cross_entropy`
//! (logits `(B, T, V)`, targets `(B, T)`) keep the batch and time axes apart because they use them — for the position-table
//! row of `t`, for the causal mask within each sequence, and for the `(b, t)` at which an
//! out-of-range target is reported — and the softmax works on one sequence's and head's
//! `(T_q, T_k)` scores.

pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub(crate) mod elementwise;
pub mod embedding;
pub(crate) mod fast_math;
pub mod flash_attention;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub(crate) mod matmul;
pub(crate) mod recycle;
pub(crate) mod reduce;
pub mod rms_norm;
pub mod rope;
pub(crate) mod scratch;
pub mod softmax;
pub mod swiglu;
pub mod tied_head;

pub use attention::{
    attention_backward, attention_dropout_backward, attention_dropout_forward, attention_forward,
    grouped_attention_backward, grouped_attention_forward,
};
pub use cross_entropy::{cross_entropy_backward, cross_entropy_forward};
pub use dropout::{DropoutMask, dropout_backward, dropout_forward};
pub use embedding::{
    embedding_backward, embedding_forward, token_embedding_backward, token_embedding_forward,
};
pub use flash_attention::{
    FlashOutput, FlashView, flash_attention_backward, flash_attention_forward,
};
pub use gelu::{gelu_backward, gelu_forward};
pub use layer_norm::{LayerNormCache, layer_norm_backward, layer_norm_forward};
pub use linear::{linear_backward, linear_forward};
pub use rms_norm::{RmsNormCache, rms_norm_backward, rms_norm_forward};
pub use rope::{rope_backward, rope_forward};
pub use softmax::{causal_softmax_forward, softmax_backward_in_place};
pub use swiglu::{silu_backward, silu_forward, swiglu_backward, swiglu_forward};
pub use tied_head::{tied_head_backward, tied_head_forward};
