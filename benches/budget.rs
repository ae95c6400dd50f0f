//! RetryBudget against tower's `TpsBudget`, same run: one deposit plus one
//! withdrawal, on one thread and on two threads sharing the budget.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Uri;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tower::retry::budget::{Budget, TpsBudget};
use tower_reissue::RetryBudget;

/// Runs `op` `iters` times on each of `threads` threads started together;
/// the time per iteration of one thread.
fn contended<T: Send + Sync + 'static>(
    shared: &Arc<T>,
    threads: usize,
    iters: u64,
    op: fn(&T),
) -> Duration {
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let shared = shared.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let began = Instant::now();
                for _ in 0..iters {
                    op(&shared);
                }
                began.elapsed()
            })
        })
        .collect();
    start.wait();
    let total: Duration = workers.into_iter().map(|w| w.join().unwrap()).sum();
    total / threads as u32
}

fn reissue(budget: &RetryBudget) {
    budget.deposit();
    black_box(budget.withdraw());
}

fn reissue_per_host(budget: &RetryBudget) {
    static URI: std::sync::LazyLock<Uri> =
        std::sync::LazyLock::new(|| Uri::from_static("https://api.example/v1/emails"));
    budget.deposit_for(&URI);
    black_box(budget.withdraw_for(&URI));
}

fn tower_tps(budget: &TpsBudget) {
    budget.deposit();
    black_box(budget.withdraw());
}

fn deposit_withdraw(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget_deposit_withdraw");
    for threads in [1, 2] {
        let tower = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
        group.bench_function(format!("tower_tps_budget/{threads}_threads"), |b| {
            b.iter_custom(|iters| contended(&tower, threads, iters, tower_tps))
        });
        let ours = Arc::new(RetryBudget::new(0.2));
        group.bench_function(format!("retry_budget/{threads}_threads"), |b| {
            b.iter_custom(|iters| contended(&ours, threads, iters, reissue))
        });
        let per_host = Arc::new(RetryBudget::builder().per_host().build());
        group.bench_function(format!("retry_budget_per_host/{threads}_threads"), |b| {
            b.iter_custom(|iters| contended(&per_host, threads, iters, reissue_per_host))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config().sample_size(30);
    targets = deposit_withdraw
}
criterion_main!(benches);
