//! Two threads saving different models to one path, many times: every save's temporary file
//! is its own, so the file afterwards always loads and is exactly one of the two models, and
//! a save that returned `Ok` wrote its model whole. Models also move between threads and
//! serve inference from several at once.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use baregpt::checkpoint::{self, Extras};
use baregpt::layers::{Gelu, LayerNorm, Linear, Sequential};
use baregpt::prelude::*;
use baregpt::{Gpt, GptConfig};
use common::rng;
use ndarray::{Array2, Array3};

fn model(seed: u64) -> Gpt<f32> {
    let config = GptConfig {
        mlp_hidden: 8,
        ..GptConfig::with_sizes(6, 8, 2, 1, 8)
    };
    Gpt::new(config, &mut rng(seed)).unwrap()
}

#[test]
fn two_threads_saving_to_one_path_leave_one_whole_model() {
    let dir = std::env::temp_dir().join(format!("baregpt-concurrency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = Arc::new(dir.join("shared.safetensors"));
    let models = [Arc::new(model(1)), Arc::new(model(2))];
    let bytes: Vec<Vec<u8>> = models
        .iter()
        .map(|m| checkpoint::to_bytes(m, &Extras::default()).unwrap())
        .collect();
    assert_ne!(bytes[0], bytes[1]);

    const ROUNDS: usize = 150;
    let barrier = Arc::new(Barrier::new(2));
    let (mut seen, mut oks) = ([0usize; 2], [0usize; 2]);
    for round in 0..ROUNDS {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let (model, path, barrier) = (
                    Arc::clone(&models[i]),
                    Arc::clone(&path),
                    Arc::clone(&barrier),
                );
                thread::spawn(move || {
                    barrier.wait();
                    checkpoint::save(&*path, &model, &Extras::default())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (i, result) in results.iter().enumerate() {
            assert!(result.is_ok(), "round {round}: save {i} failed: {result:?}");
            oks[i] += 1;
        }
        // The file is byte-for-byte one of the two models, and it loads.
        let on_disk = std::fs::read(&*path).unwrap();
        let which = bytes
            .iter()
            .position(|b| *b == on_disk)
            .unwrap_or_else(|| panic!("round {round}: the file is neither model"));
        seen[which] += 1;
        let (loaded, _) = checkpoint::load::<f32>(&*path).unwrap();
        assert_eq!(
            checkpoint::to_bytes(&loaded, &Extras::default()).unwrap(),
            bytes[which]
        );
    }
    // Each thread's last save alone: the file is then exactly its model.
    for (i, model) in models.iter().enumerate() {
        checkpoint::save(&*path, model, &Extras::default()).unwrap();
        assert_eq!(std::fs::read(&*path).unwrap(), bytes[i]);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|name| name.to_string_lossy().contains(".tmp-"))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "concurrency: {ROUNDS} rounds, saves Ok {oks:?}, file held model 0 {} times and model 1 \
         {} times, {} temporary files left",
        seen[0],
        seen[1],
        leftovers.len()
    );
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn boxed_layer_models_move_between_threads_and_serve_inference_from_several() {
    let mut r = rng(3);
    let seq = Sequential::<f64>::new()
        .push(Linear::new(4, 6, true, &mut r).unwrap())
        .push(Gelu::new())
        .push(LayerNorm::new(6).unwrap());
    let x = Array3::from_shape_fn((2, 3, 4), |(b, t, c)| (b + t + c) as f64 * 0.1);
    let expected = seq.infer(&x).unwrap();
    // Moved into a thread, trained there, moved back.
    let (seq, y) = thread::spawn(move || {
        let mut seq = seq;
        let y = seq.forward(&x).unwrap();
        seq.backward(&Array3::ones(y.raw_dim())).unwrap();
        (seq, y)
    })
    .join()
    .unwrap();
    assert_eq!(y, expected);
    // Shared by reference between threads for inference.
    let shared = Arc::new(seq);
    let x = Array3::from_shape_fn((2, 3, 4), |(b, t, c)| (b + t + c) as f64 * 0.1);
    let outputs: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| shared.infer(&x).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(outputs.iter().all(|o| *o == expected));
    let gpt = Arc::new(model(4));
    let ids = Array2::from_shape_fn((1, 5), |(_, t)| t);
    let a = gpt.infer(&ids).unwrap();
    let b = thread::spawn({
        let gpt = Arc::clone(&gpt);
        move || gpt.infer(&ids).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(a, b);
}
