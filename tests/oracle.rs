//! The f64 oracle against an independent one (dense Gauss–Jordan inverse), and its behaviour
//! where the matrix is singular.

mod common;
use bk_infer::workload::Rng;
use bk_infer::{reference, stats, BkError, Problem, H0};
use common::tol;
use num_complex::Complex64;

#[test]
fn oracle_matches_dense_inverse_for_small_n() {
    let mut rng = Rng::new(11);
    for &n in &[1usize, 2, 3, 5, 7, 13, 31, 64, 97, 128] {
        for _ in 0..6 {
            let p = common::random_problem(&mut rng, n, 1e-3, 10.0);
            let v: Vec<f64> = (0..n).map(|_| 2.0 * rng.normal()).collect();
            let dense = reference::dense_inverse_diag(&p, &v).unwrap();
            let mut g = vec![Complex64::default(); n];
            reference::solve_row(&p, &v, &mut g).unwrap();
            let err = stats::rel_l2(&g, &dense);
            assert!(err < tol::ORACLE_VS_DENSE, "n {n} z {} err {err:e}", p.z());
        }
    }
}

#[test]
fn oracle_handles_non_hermitian_h0_away_from_singularity() {
    // k_i < 0 somewhere: pivots are no longer bounded below by Im z, but the math is the same.
    let mut rng = Rng::new(5);
    let n = 40;
    let mut h0 = common::random_h0(&mut rng, n);
    h0.sub[7] = -h0.sub[7];
    let p = Problem::new(h0, Complex64::new(0.3, 0.7)).unwrap();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    let dense = reference::dense_inverse_diag(&p, &v).unwrap();
    let g = reference::solve_batch(&p, &v).unwrap();
    assert!(stats::rel_l2(&g, &dense) < tol::ORACLE_VS_DENSE);
}

#[test]
fn singular_pivot_is_reported_with_row_and_position() {
    // z = 0, v_0 = 2: d_0 = −2 + 2 = 0, so α_0 = 0 and the second row's recursion divides by it.
    let p = Problem::new(H0::laplacian(4), Complex64::new(0.0, 0.0)).unwrap();
    let mut v = vec![0.5; 8];
    v[4] = 2.0;
    match reference::solve_batch(&p, &v) {
        Err(BkError::SingularPivot { row, pos, .. }) => assert_eq!((row, pos), (1, 0)),
        other => panic!("expected a singular pivot, got {other:?}"),
    }
}
