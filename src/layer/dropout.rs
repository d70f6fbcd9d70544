//! [`DropoutSite`]: the state of one place in a model that drops activations in training, and
//! [`DropoutMode`], which a model's owner sets through [`Layer::set_dropout`](super::Layer::set_dropout).

use crate::Result;
use crate::kernels::dropout::{DropoutMask, check_probability};

/// What the dropout sites of a layer do in its training [`forward`](super::Layer::forward).
/// Inference ([`infer_with`](super::Layer::infer_with)) never drops, whatever the mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DropoutMode {
    /// Each forward draws a fresh mask (the next pass of each site): training.
    #[default]
    Train,
    /// Each forward reuses the mask of the site's last pass (the first draws one): the
    /// layer is then one fixed function, which is what a gradient check evaluates many
    /// times.
    Hold,
    /// Nothing is dropped: forward computes what inference does, for evaluation losses.
    Off,
}

/// One dropout site: its drop probability `p`, its seed, how many masks it has drawn, and
/// its [`DropoutMode`]. A layer with dropout keeps one per place it drops, asks it for
/// [`next_mask`](DropoutSite::next_mask) in each forward, stores the mask (it is small) for
/// the backward, and sets its mode in [`Layer::set_dropout`](super::Layer::set_dropout).
///
/// ```
/// use baregpt::layer::{DropoutMode, DropoutSite};
///
/// let mut site = DropoutSite::new(0.1, 42)?;
/// let first = site.next_mask().unwrap();
/// assert_ne!(site.next_mask(), Some(first)); // training: a new mask each pass
/// site.set_mode(DropoutMode::Hold);
/// let held = site.next_mask();
/// assert_eq!(site.next_mask(), held); // held: the last one again
/// site.set_mode(DropoutMode::Off);
/// assert_eq!(site.next_mask(), None);
/// assert!(DropoutSite::new(1.0, 0).is_err());
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropoutSite {
    p_bits: u64,
    seed: u64,
    passes: u64,
    mode: DropoutMode,
}

impl DropoutSite {
    /// A site dropping with probability `p`, its masks derived from `seed`, in
    /// [`DropoutMode::Train`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) unless `0 ≤ p < 1`.
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        check_probability(p)?;
        Ok(Self {
            p_bits: p.to_bits(),
            seed,
            passes: 0,
            mode: DropoutMode::Train,
        })
    }

    /// The drop probability `p`.
    pub fn p(&self) -> f64 {
        f64::from_bits(self.p_bits)
    }

    /// The seed the masks are derived from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How many masks have been drawn (the next training pass's number).
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// The current mode.
    pub fn mode(&self) -> DropoutMode {
        self.mode
    }

    /// Sets the mode.
    pub fn set_mode(&mut self, mode: DropoutMode) {
        self.mode = mode;
    }

    /// The mask of this training forward, or `None` when nothing is dropped (`p = 0` or
    /// [`DropoutMode::Off`]). [`DropoutMode::Train`] advances to a new pass;
    /// [`DropoutMode::Hold`] repeats the last.
    pub fn next_mask(&mut self) -> Option<DropoutMask> {
        if self.mode == DropoutMode::Off || self.p() == 0.0 {
            return None;
        }
        let pass = match self.mode {
            DropoutMode::Hold if self.passes > 0 => self.passes - 1,
            _ => {
                self.passes = self.passes.wrapping_add(1);
                self.passes - 1
            }
        };
        // The probability was checked when the site was made.
        DropoutMask::new(self.p(), self.seed, pass).ok()
    }
}
