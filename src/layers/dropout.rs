//! [`Dropout`]: inverted dropout as a parameter-free layer, its masks from a [`DropoutSite`].

use std::marker::PhantomData;

use ndarray::Array3;

use crate::kernels::{DropoutMask, dropout_backward, dropout_forward};
use crate::layer::{Cache, DropoutMode, DropoutSite, InferState};
use crate::param::Params;
use crate::{Float, Layer, Result, params};

const LAYER: &str = "Dropout";

/// Inverted dropout, any `(B, T, C)` → the same shape. No parameters.
///
/// In a training [`forward`](Layer::forward), `y = m ⊙ x` with `mᵢ = 1/(1 − p)` for the
/// elements the pass keeps (each with probability `1 − p`) and `mᵢ = 0` for the others, so
/// `E[y] = x`; the backward is `dx = m ⊙ dy` with the same mask. The mask is a pure function
/// of `(seed, pass, element index)` ([`DropoutMask`]): the layer caches only that small key,
/// never the mask. [`infer_with`](Layer::infer_with) is the identity: inference never drops.
///
/// What a forward does is set by [`Layer::set_dropout`]: [`DropoutMode::Train`] (the
/// default) draws the next pass's mask, [`DropoutMode::Hold`] reuses the last one (a gradient
/// check), [`DropoutMode::Off`] drops nothing. The same seed and the same sequence of
/// forwards give the same masks.
///
/// # Example
///
/// ```
/// use baregpt::{layer::DropoutMode, layers::Dropout, prelude::*};
/// use ndarray::Array3;
///
/// let mut drop = Dropout::<f64>::new(0.25, 7)?;
/// let x = Array3::from_elem((2, 4, 25), 2.0);
/// let y = drop.forward(&x)?;
/// assert!(y.iter().all(|&v| v == 0.0 || v == 2.0 / 0.75));
/// let dx = drop.backward(&Array3::ones(y.raw_dim()))?;
/// assert_eq!(dx.mapv(|d| d * 2.0), y); // the backward multiplies by the same mask
/// assert_eq!(drop.infer(&x)?, x); // inference never drops
/// drop.set_dropout(DropoutMode::Off);
/// assert_eq!(drop.forward(&x)?, x); // nor does an evaluation forward
/// assert!(Dropout::<f64>::new(1.0, 7).is_err());
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Dropout<F: Float> {
    site: DropoutSite,
    /// The mask of the last forward (`None`: nothing was dropped).
    mask: Cache<Option<DropoutMask>>,
    _float: PhantomData<fn() -> F>,
}

impl<F: Float> Params<F> for Dropout<F> {
    params!(F;);
}

impl<F: Float> Dropout<F> {
    /// A dropout layer dropping with probability `p`, its masks derived from `seed`, in
    /// [`DropoutMode::Train`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) unless `0 ≤ p < 1` (NaN
    /// included).
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        Ok(Self {
            site: DropoutSite::new(p, seed)?,
            mask: Cache::new(),
            _float: PhantomData,
        })
    }

    /// The drop probability `p`.
    pub fn p(&self) -> f64 {
        self.site.p()
    }

    /// The site: seed, pass count and mode.
    pub fn site(&self) -> &DropoutSite {
        &self.site
    }

    /// The site, mutably (to set its seed or pass count).
    pub fn site_mut(&mut self) -> &mut DropoutSite {
        &mut self.site
    }

    /// The computation: `x` times `mask`, or `x` itself when nothing is dropped.
    fn apply(x: &Array3<F>, mask: Option<&DropoutMask>) -> Array3<F> {
        match mask {
            Some(mask) => dropout_forward(x.view(), mask),
            None => x.clone(),
        }
    }
}

impl<F: Float> Layer<F> for Dropout<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // Forget the previous forward first (the rule of every layer; this one cannot fail).
        self.mask.clear();
        let mask = self.site.next_mask();
        let y = Self::apply(x, mask.as_ref());
        self.mask.store(mask, y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, _: &mut InferState<'_, F>) -> Result<Array3<F>> {
        Ok(Self::apply(x, None))
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        Ok(match self.mask.get(LAYER, dy)? {
            Some(mask) => dropout_backward(dy.view(), mask),
            None => dy.clone(),
        })
    }

    fn set_dropout(&mut self, mode: DropoutMode) {
        self.site.set_mode(mode);
    }
}
