use baregpt::kernels::*;
use ndarray::{Array1, Array2};
use std::time::Instant;
fn best(mut f: impl FnMut()) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64() * 1e3);
    }
    b
}
fn main() {
    let x = Array2::from_shape_fn((2048, 256), |(a, c)| ((a * 7 + c) % 17) as f32 * 0.1);
    let w = Array2::from_shape_fn((256, 1024), |(a, c)| ((a * 3 + c) % 13) as f32 * 0.01);
    let b = Array1::<f32>::zeros(1024);
    println!(
        "linear fwd no bias {:.2} ms",
        best(|| {
            linear_forward(x.view(), w.view(), None).unwrap();
        })
    );
    println!(
        "linear fwd bias    {:.2} ms",
        best(|| {
            linear_forward(x.view(), w.view(), Some(b.view())).unwrap();
        })
    );
    println!(
        "zeros 2048x1024    {:.2} ms",
        best(|| {
            let z = Array2::<f32>::zeros((2048, 1024));
            std::hint::black_box(z);
        })
    );
    let y = linear_forward(x.view(), w.view(), None).unwrap();
    let mut dw = Array2::<f32>::zeros((256, 1024));
    println!(
        "linear bwd         {:.2} ms",
        best(|| {
            linear_backward(x.view(), w.view(), y.view(), dw.view_mut(), None).unwrap();
        })
    );
    println!(
        "gelu fwd           {:.2} ms",
        best(|| {
            gelu_forward(y.view());
        })
    );
}
#[allow(dead_code)]
fn _unused() {}
