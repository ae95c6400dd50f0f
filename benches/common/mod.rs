//! Settings shared by every bench: short enough that a full `cargo bench`
//! takes minutes on a 2-core machine, long enough for stable medians.

use criterion::Criterion;
use std::time::Duration;

pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}
