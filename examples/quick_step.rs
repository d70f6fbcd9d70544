use baregpt::{Gpt, GptConfig, Layer};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map(String::as_str).unwrap_or("baregpt");
    let (cfg, b) = match preset {
        "tiny" => (GptConfig::tiny(65), 8),
        "char-6l" => (GptConfig::char_6l(65), 8),
        "gpt2-small" => (GptConfig::gpt2_small(64), 4),
        _ => (
            GptConfig {
                final_norm: true,
                ..GptConfig::baregpt(65)
            },
            16,
        ),
    };
    let t = cfg.context;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut gpt = Gpt::<f32>::new(cfg.clone(), &mut rng).unwrap();
    let ids = Array2::from_shape_simple_fn((b, t), || rng.random_range(0..cfg.vocab_size));
    let tg = Array2::from_shape_simple_fn((b, t), || rng.random_range(0..cfg.vocab_size));
    let mut times = vec![];
    for i in 0..8 {
        let t0 = Instant::now();
        gpt.zero_grad();
        let t1 = Instant::now();
        let loss = gpt.loss(&ids, &tg).unwrap();
        let t2 = Instant::now();
        gpt.backward().unwrap();
        let t3 = Instant::now();
        if i >= 2 {
            times.push(t3 - t0);
        }
        eprintln!(
            "zero {:?} fwd {:?} bwd {:?} loss {loss}",
            t1 - t0,
            t2 - t1,
            t3 - t2
        );
    }
    times.sort();
    println!("{preset}: median fwd+bwd {:?}", times[times.len() / 2]);
}
