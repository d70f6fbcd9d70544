use baregpt::{Layer, layers::*};
use ndarray::Array3;
use rand::SeedableRng;
use std::time::Instant;
fn time<L: Layer<f32>>(name: &str, l: &mut L, x: &Array3<f32>) {
    let mut best_f = f64::MAX;
    let mut best_b = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        let y = l.forward(x).unwrap();
        let t1 = Instant::now();
        l.backward(&y).unwrap();
        let t2 = Instant::now();
        best_f = best_f.min((t1 - t0).as_secs_f64() * 1e3);
        best_b = best_b.min((t2 - t1).as_secs_f64() * 1e3);
    }
    println!("{name:10} fwd {best_f:7.2} ms  bwd {best_b:7.2} ms");
}
fn main() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x = Array3::from_shape_fn((16, 128, 256), |(a, b, c)| {
        ((a * 7 + b * 3 + c) % 17) as f32 * 0.1
    });
    let h = Array3::from_shape_fn((16, 128, 1024), |(a, b, c)| {
        ((a * 7 + b * 3 + c) % 17) as f32 * 0.1
    });
    time("ln", &mut LayerNorm::new(256), &x);
    time("linear", &mut Linear::new(256, 1024, true, &mut rng), &x);
    time("gelu", &mut Gelu::new(), &h);
    time("mlp", &mut Mlp::new(256, 1024, &mut rng), &x);
    time("attn", &mut Attention::new(256, 4, &mut rng).unwrap(), &x);
    time(
        "block",
        &mut Block::new(256, 4, 1024, &mut rng).unwrap(),
        &x,
    );
}
