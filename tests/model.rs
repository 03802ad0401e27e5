//! Model files round-trip exactly, for every format and edge case.

mod common;
use bk_infer::model::{Layer, Model, ModelMeta};
use bk_infer::quant::{AffineParams, Bits, ComplexQuant, QuantSpec, TensorQuant};
use bk_infer::workload::Rng;
use bk_infer::QuantPlan;
use std::path::Path;

fn tq(spec: QuantSpec, n: usize, rng: &mut Rng) -> TensorQuant {
    if spec.dynamic {
        return TensorQuant::dynamic(spec);
    }
    let g = spec.groups(n);
    let scale = (0..g).map(|_| rng.range(1e-4, 1.0) as f32).collect();
    let zero = (!spec.symmetric).then(|| (0..g).map(|_| rng.below(600) as i16 - 300).collect());
    TensorQuant::new_static(spec, AffineParams { scale, zero })
}

#[test]
fn every_plan_round_trips_bit_for_bit() {
    let mut rng = Rng::new(17);
    let path = Path::new("memory.safetensors");
    let mut layers = vec![];
    for (k, &n) in [1usize, 2, 129, 512].iter().enumerate() {
        let p = common::random_problem(&mut rng, n, 0.01, 2.0);
        let v = match k % 3 {
            0 => None,
            1 => Some(tq(QuantSpec::for_v(Bits::Int8, 1), n, &mut rng)),
            _ => Some(tq(QuantSpec::for_v(Bits::Int4, 128), n, &mut rng)),
        };
        let g = match k % 4 {
            0 => None,
            1 => Some(ComplexQuant { re: tq(QuantSpec::for_g(Bits::Int8, 1), n, &mut rng), im: tq(QuantSpec::for_g(Bits::Int8, 1), n, &mut rng) }),
            2 => {
                let d = QuantSpec { dynamic: true, ..QuantSpec::for_g(Bits::Int4, 32) };
                Some(ComplexQuant { re: TensorQuant::dynamic(d), im: TensorQuant::dynamic(d) })
            }
            _ => Some(ComplexQuant { re: tq(QuantSpec::for_g(Bits::Int4, 7), n, &mut rng), im: tq(QuantSpec::for_g(Bits::Int4, 7), n, &mut rng) }),
        };
        layers.push(Layer { problem: p, plan: QuantPlan { v, g }, storage: Default::default() });
    }
    let meta = ModelMeta { calibration_method: "mse".into(), calibration_samples: 800, created_by: "test".into() };
    let model = Model { layers, meta: meta.clone() };
    let bytes = model.to_bytes(path).unwrap();
    let back = Model::from_bytes(&bytes, path).unwrap();
    assert_eq!(back.meta, meta);
    assert_eq!(back.layers.len(), model.layers.len());
    for (a, b) in model.layers.iter().zip(&back.layers) {
        assert_eq!(a.plan, b.plan);
        assert_eq!(a.problem.h0(), b.problem.h0());
        assert_eq!(a.problem.z(), b.problem.z());
    }
    assert!(back.layer(4).is_err());
}
