//! [`DecayFilter`]: which parameters receive weight decay, chosen by dotted name.

use std::fmt;
use std::sync::Arc;

/// Decides, by dotted parameter name, which parameters [`Adam`](crate::Adam) applies weight
/// decay to.
///
/// The default, [`DecayFilter::all`], decays every parameter, as PyTorch does within one
/// parameter group. Training a transformer usually excludes biases, LayerNorm parameters and
/// embeddings: [`DecayFilter::usual`] does that for this crate's names (see
/// [`is_usually_excluded`]). Exclusions can also be given as glob patterns
/// ([`DecayFilter::exclude_patterns`]) or by any predicate ([`DecayFilter::from_fn`]).
///
/// The filter only matters when the weight decay is non-zero.
///
/// # Example
///
/// ```
/// use baregpt::optim::DecayFilter;
///
/// let usual = DecayFilter::usual();
/// assert!(usual.decays("blocks.0.attn.w_q"));
/// assert!(!usual.decays("blocks.0.mlp.fc.b"));
/// assert!(!usual.decays("blocks.1.ln2.gamma"));
/// assert!(!usual.decays("embed.tok"));
///
/// let patterns = DecayFilter::exclude_patterns(["*.b", "head.*"]);
/// assert!(patterns.decays("blocks.0.mlp.fc.w"));
/// assert!(!patterns.decays("head.w"));
///
/// let custom = DecayFilter::from_fn(|name| name.ends_with(".w"));
/// assert!(custom.decays("head.w") && !custom.decays("embed.pos"));
/// ```
#[derive(Clone, Default)]
pub struct DecayFilter {
    rule: Rule,
}

#[derive(Clone, Default)]
enum Rule {
    #[default]
    All,
    Usual,
    ExcludePatterns(Vec<String>),
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl DecayFilter {
    /// Decays every parameter (the default).
    pub fn all() -> Self {
        Self { rule: Rule::All }
    }

    /// Decays every parameter except those [`is_usually_excluded`] names: biases, LayerNorm
    /// parameters and embeddings.
    pub fn usual() -> Self {
        Self { rule: Rule::Usual }
    }

    /// Decays every parameter whose name matches none of the glob `patterns`.
    ///
    /// A pattern matches the whole dotted name; `*` stands for any run of characters (dots
    /// included) and `?` for one character. For example `*.b` matches every bias, `embed.*`
    /// the embeddings and `blocks.*.ln?.*` the blocks' LayerNorms.
    pub fn exclude_patterns<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            rule: Rule::ExcludePatterns(patterns.into_iter().map(Into::into).collect()),
        }
    }

    /// Decays exactly the parameters for which `decays(name)` is true.
    pub fn from_fn(decays: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self {
            rule: Rule::Predicate(Arc::new(decays)),
        }
    }

    /// Whether the parameter called `name` receives weight decay.
    pub fn decays(&self, name: &str) -> bool {
        match &self.rule {
            Rule::All => true,
            Rule::Usual => !is_usually_excluded(name),
            Rule::ExcludePatterns(patterns) => !patterns.iter().any(|p| glob_match(p, name)),
            Rule::Predicate(decays) => decays(name),
        }
    }
}

impl fmt::Debug for DecayFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Rule::All => f.write_str("DecayFilter::all()"),
            Rule::Usual => f.write_str("DecayFilter::usual()"),
            Rule::ExcludePatterns(p) => write!(f, "DecayFilter::exclude_patterns({p:?})"),
            Rule::Predicate(_) => f.write_str("DecayFilter::from_fn(..)"),
        }
    }
}

/// Whether a parameter is one that transformer training usually keeps out of weight decay.
///
/// The name is split at dots into segments. It is excluded when
/// * its last segment is `b`, `bias`, `gamma` or `beta` (biases and LayerNorm gain/shift), or
/// * any segment starts with `ln` or `embed`, or contains `norm` (a LayerNorm such as `ln1`,
///   `ln_f`, `layer_norm`, or an embedding such as `embed.tok` and `embed.pos`).
///
/// For a [`Gpt`](crate::Gpt) this keeps decay on the attention and MLP weight matrices and
/// `head.w` only.
pub fn is_usually_excluded(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    matches!(last, "b" | "bias" | "gamma" | "beta")
        || name
            .split('.')
            .any(|s| s.starts_with("ln") || s.starts_with("embed") || s.contains("norm"))
}

/// Whole-string glob match: `*` matches any run (possibly empty), `?` one character.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0, 0);
    // Where the last `*` was and which position of `s` it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((star_p, star_s)) = star {
            // Let the last star swallow one more character and retry.
            pi = star_p + 1;
            si = star_s + 1;
            star = Some((star_p, star_s + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_basics() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "a.b.c"));
        assert!(glob_match("*.b", "blocks.0.mlp.fc.b"));
        assert!(!glob_match("*.b", "blocks.0.mlp.fc.w"));
        assert!(!glob_match("*.b", "b"));
        assert!(glob_match("embed.*", "embed.tok"));
        assert!(!glob_match("embed.*", "xembed.tok"));
        assert!(glob_match("blocks.*.ln?.*", "blocks.12.ln2.gamma"));
        assert!(!glob_match("blocks.*.ln?.*", "blocks.1.ln_f.gamma"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("h?ad.w", "head.w"));
    }

    #[test]
    fn usual_exclusions_on_gpt_names() {
        let decayed = [
            "blocks.0.attn.w_q",
            "blocks.0.attn.w_o",
            "blocks.1.mlp.fc.w",
            "blocks.1.mlp.proj.w",
            "head.w",
            "w",
        ];
        let excluded = [
            "embed.tok",
            "embed.pos",
            "blocks.0.ln1.gamma",
            "blocks.0.ln2.beta",
            "blocks.1.mlp.fc.b",
            "ln_f.gamma",
            "head.b",
            "b",
            "encoder.layer_norm.weight",
            "embedding.weight",
        ];
        let usual = DecayFilter::usual();
        for name in decayed {
            assert!(usual.decays(name), "{name} should be decayed");
        }
        for name in excluded {
            assert!(!usual.decays(name), "{name} should be excluded");
        }
    }

    #[test]
    fn all_patterns_and_predicates() {
        assert!(DecayFilter::all().decays("embed.tok"));
        assert!(DecayFilter::default().decays("x.b"));
        let f = DecayFilter::exclude_patterns(vec!["*.b".to_string(), "embed.*".to_string()]);
        assert!(!f.decays("head.b") && !f.decays("embed.pos") && f.decays("head.w"));
        let g = DecayFilter::from_fn(|n| n.starts_with("blocks."));
        assert!(g.decays("blocks.3.attn.w_k") && !g.decays("head.w"));
        assert_eq!(
            format!("{f:?}"),
            "DecayFilter::exclude_patterns([\"*.b\", \"embed.*\"])"
        );
    }
}
