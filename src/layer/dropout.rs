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

    /// Sets the seed the masks are derived from, keeping the pass count (with
    /// [`set_passes`](DropoutSite::set_passes), to reproduce or resume a run's masks).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// Sets how many masks have been drawn: the next training forward uses pass `passes`.
    pub fn set_passes(&mut self, passes: u64) {
        self.passes = passes;
    }

    /// The mask of this training forward, or `None` when nothing is dropped (`p = 0` or
    /// [`DropoutMode::Off`]). [`DropoutMode::Train`] advances to a new pass;
    /// [`DropoutMode::Hold`] repeats the last.
    pub fn next_mask(&mut self) -> Option<DropoutMask> {
        let (mask, pass) = self.upcoming()?;
        // Train: `pass` is `passes`, which advances (saturating: a site that has drawn 2⁶⁴
        // masks repeats its last); Hold: `pass` was already drawn.
        self.passes = self.passes.max(pass.saturating_add(1));
        Some(mask)
    }

    /// The mask the next [`next_mask`](DropoutSite::next_mask) will return, without drawing
    /// it: a layer that may still fail looks at it first and draws it once it has succeeded,
    /// so a failed forward leaves the site as it was.
    pub fn peek_mask(&self) -> Option<DropoutMask> {
        self.upcoming().map(|(mask, _)| mask)
    }

    /// The next mask and its pass number, or `None` when nothing is dropped.
    fn upcoming(&self) -> Option<(DropoutMask, u64)> {
        if self.mode == DropoutMode::Off || self.p() == 0.0 {
            return None;
        }
        let pass = match self.mode {
            DropoutMode::Hold if self.passes > 0 => self.passes - 1,
            _ => self.passes,
        };
        // The probability was checked when the site was made, so `new` succeeds.
        DropoutMask::new(self.p(), self.seed, pass)
            .ok()
            .map(|mask| (mask, pass))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_is_the_next_mask_and_hold_repeats_the_last() {
        let mut site = DropoutSite::new(0.3, 5).unwrap();
        site.set_mode(DropoutMode::Hold);
        let first = site.peek_mask();
        assert_eq!(site.passes(), 0);
        assert_eq!(site.next_mask(), first); // Hold with no pass yet draws pass 0
        assert_eq!(site.passes(), 1);
        assert_eq!(site.next_mask(), first);
        site.set_mode(DropoutMode::Train);
        let second = site.peek_mask();
        assert_ne!(second, first);
        assert_eq!(site.next_mask(), second);
        assert_eq!(site.passes(), 2);
        site.set_mode(DropoutMode::Hold);
        assert_eq!(site.next_mask(), second);
        assert_eq!(site.passes(), 2);
    }

    #[test]
    fn zero_p_never_draws_and_the_last_pass_does_not_overflow() {
        let mut none = DropoutSite::new(0.0, 5).unwrap();
        assert_eq!(none.next_mask(), None);
        assert_eq!(none.passes(), 0);
        let mut last = DropoutSite::new(0.5, 5).unwrap();
        last.set_passes(u64::MAX);
        let mask = last.next_mask();
        assert_eq!(mask, DropoutMask::new(0.5, 5, u64::MAX).ok());
        assert_eq!(last.next_mask(), mask);
        last.set_seed(6);
        last.set_passes(0);
        assert_eq!(last.next_mask(), DropoutMask::new(0.5, 6, 0).ok());
    }
}
