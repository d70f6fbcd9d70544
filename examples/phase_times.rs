use baregpt::{Adam, AdamConfig, Gpt, GptConfig, Layer};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use std::time::Instant;
fn main() {
    let cfg = GptConfig {
        final_norm: true,
        ..GptConfig::baregpt(65)
    };
    let (b, t) = (16, 128);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut gpt = Gpt::<f32>::new(cfg.clone(), &mut rng).unwrap();
    let mut adam = Adam::new(AdamConfig::adam(3e-4)).unwrap();
    let ids = Array2::from_shape_simple_fn((b, t), || rng.random_range(0..65));
    let tg = Array2::from_shape_simple_fn((b, t), || rng.random_range(0..65));
    for _ in 0..6 {
        let t0 = Instant::now();
        gpt.zero_grad();
        let t1 = Instant::now();
        gpt.loss(&ids, &tg).unwrap();
        let t2 = Instant::now();
        gpt.backward().unwrap();
        let t3 = Instant::now();
        adam.step(&mut gpt).unwrap();
        let t4 = Instant::now();
        println!(
            "zero {:.1} fwd {:.1} bwd {:.1} adam {:.1} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
            (t4 - t3).as_secs_f64() * 1e3
        );
    }
}
