//! `MemoryQueue`: the shared dead-letter queue conformance suite.

mod dead_letter_conformance;

use tower_reissue::dead_letter::MemoryQueue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_queue_meets_the_contract() {
    dead_letter_conformance::check_contract(|| async { MemoryQueue::new() }).await;
}
