//! Runs every example to completion, as a new user would, and checks what it
//! prints. `cargo test` builds the examples before running the tests.

use std::path::PathBuf;
use std::time::Duration;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the whole suite with `cargo test` (it builds the examples) or `cargo build --examples` first",
        path.display()
    );
    path
}

/// Runs an example, bounded in time, and returns its standard output.
async fn run(name: &str, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(example(name));
    command.args(args).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("example {name} did not finish within 120 s"))
        .expect("the example starts");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "example {name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn hyper_client() {
    let out = run("hyper_client", &[]).await;
    assert!(
        out.contains("GET /items/42\n  -> 200 OK after 3 attempt(s)"),
        "{out}"
    );
}

#[tokio::test]
async fn axum_server() {
    let out = run("axum_server", &[]).await;
    assert!(out.contains("emails actually sent: 1"), "{out}");
}

#[tokio::test]
async fn axum_outbound() {
    let out = run("axum_outbound", &[]).await;
    assert!(out.contains("charges made by the provider: 1"), "{out}");
}

#[tokio::test]
async fn custom_classifier() {
    let out = run("custom_classifier", &[]).await;
    assert!(out.contains("status 200 OK after 3 attempts"), "{out}");
}

#[tokio::test]
async fn reconcile() {
    let out = run("reconcile", &[]).await;
    assert!(
        out.contains("email to ada@example.com: 500 Internal Server Error after 1 attempt(s): sent (the lookup found it)"),
        "{out}"
    );
    assert!(
        out.contains("email to grace@example.com: 201 Created after 2 attempt(s): sent"),
        "{out}"
    );
    assert!(out.contains("emails actually sent: 2"), "{out}");
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn reqwest_client() {
    run("reqwest_client", &[]).await;
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn observability() {
    let out = run("observability", &[]).await;
    // One client span per attempt, the resends counted.
    assert!(out.contains("http.request.resend_count=2"), "{out}");
    assert!(out.contains("error.type=503"), "{out}");
    assert!(out.contains("error.type=connect"), "{out}");
    assert!(out.contains("idempotency.outcome=replayed"), "{out}");
    assert!(
        out.contains(r#"tower_reissue_retries_total{reason="503"} 2"#),
        "{out}"
    );
    assert!(
        out.contains(r#"tower_reissue_retries_total{reason="connect"} 2"#),
        "{out}"
    );
    assert!(
        out.contains(r#"tower_reissue_server_requests_total{outcome="executed"} 3"#),
        "{out}"
    );
    assert!(
        out.contains(r#"tower_reissue_server_requests_total{outcome="replayed"} 1"#),
        "{out}"
    );
}

/// The demo, shortened: its table must show the story.
#[tokio::test]
async fn outage() {
    let svg = std::env::temp_dir().join(format!("tower-reissue-outage-{}.svg", std::process::id()));
    let svg_arg = svg.to_string_lossy().into_owned();
    let queue = std::env::temp_dir().join(format!(
        "tower-reissue-outage-{}.sqlite",
        std::process::id()
    ));
    let queue_arg = queue.to_string_lossy().into_owned();
    // More operations than a principal's record quota in the API's store:
    // the demo's single client must still lose nothing.
    let out = run(
        "outage",
        &[
            "--ops",
            "1200",
            "--duration",
            "6",
            "--quiet",
            "--svg",
            &svg_arg,
            "--dead-letters",
            &queue_arg,
        ],
    )
    .await;
    let row = |label: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no row for {label}:\n{out}"));
        line[label.len()..]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // columns: ops succeeded failed duplicates attempts/op p50 p99
    let reissue = row("tower-reissue");
    let naive = row("naive loop (10x, fixed delay)");
    let none = row("no retries");
    assert_eq!(
        reissue[3], "0",
        "tower-reissue must cause no duplicate side effect:\n{out}"
    );
    assert_ne!(
        naive[3], "0",
        "the naive loop duplicates side effects:\n{out}"
    );
    assert_ne!(
        none[2], "0",
        "without retries, the incident fails calls:\n{out}"
    );
    let amplification: f64 = reissue[4].parse().unwrap();
    let naive_amplification: f64 = naive[4].parse().unwrap();
    assert!(amplification < naive_amplification, "{out}");
    assert!(out.contains("0 lost, 0 duplicates after replay"), "{out}");
    // The parked operations were in the SQLite queue, and all got replayed.
    assert!(out.contains("dead-letter queue "), "{out}");
    assert!(
        out.contains("after the replay:  pending 0, leased 0"),
        "{out}"
    );
    assert!(queue.exists(), "the queue is a real file");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", queue.display()));
    }

    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    assert_eq!(chart.matches("<polyline").count(), 3, "three series");
    for label in ["no retries", "naive loop", "tower-reissue"] {
        assert!(chart.contains(label), "legend names {label}");
    }
    let _ = std::fs::remove_file(svg);
}

#[tokio::test]
async fn consumer() {
    let out = run("consumer", &[]).await;
    assert!(
        out.contains("emails sent: 2000, users emailed exactly once: 2000/2000, duplicates: 0"),
        "{out}"
    );
    assert!(out.contains("every delivery acked: yes"), "{out}");
    assert!(!out.contains(" 0 crashes mid-handler"), "{out}");
}

#[cfg(feature = "redis")]
#[path = "redis_server/mod.rs"]
mod redis_server;

/// Two worker processes on one RedisStore: one stopped past its lease, one
/// killed mid-handler.
#[cfg(feature = "redis")]
#[tokio::test]
async fn consumer_on_redis() {
    let server = redis_server::RedisServer::shared();
    let out = run("consumer", &["--redis", server.url()]).await;
    for expected in [
        "taken over by the other worker; its stale claim refused by fencing: yes",
        "killed (SIGKILL) mid-handler",
        "its claim taken over after the lease: yes",
        "emails sent: 300, users emailed exactly once: 300/300, duplicates: 0",
        "every delivery acked: yes",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
}

#[cfg(feature = "postgres")]
#[path = "pg_server/mod.rs"]
mod pg_server;

/// Worker processes on one PostgresStore, the queue in PostgreSQL too: one
/// killed while it holds an uncommitted INSERT, every message's row exactly
/// once.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn consumer_on_postgres() {
    let url = pg_server::fresh_database("consumer_example").await;
    let out = run("consumer", &["--postgres", &url]).await;
    for expected in [
        "messages: 2000, deliveries: ",
        "killed (SIGKILL) mid-handler of message",
        "its INSERT uncommitted; replaced by worker d",
        "the killed worker's row rolled back: yes",
        "every delivery acked: yes (0 left)",
        "effects rows: 2000, messages with exactly one row: 2000/2000, duplicates: 0, missing: 0",
        "exactly once: yes",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    // The message being handled when the worker died has one row, by
    // another worker.
    let after_kill = out
        .lines()
        .find(|l| l.starts_with("message ") && l.contains(" afterwards: "))
        .unwrap_or_else(|| panic!("no line on the killed message:\n{out}"));
    assert!(after_kill.contains("afterwards: 1 row(s)"), "{out}");
    // Redeliveries of handled messages were answered from the store.
    let once = out
        .lines()
        .find(|l| l.starts_with("once: "))
        .unwrap_or_else(|| panic!("no once line:\n{out}"));
    let count = |label: &str| -> u64 {
        let at = once
            .find(label)
            .unwrap_or_else(|| panic!("{label:?} missing:\n{out}"));
        once[..at]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count before {label:?}:\n{out}"))
    };
    assert!(count(" replayed") > 0, "{out}");
    assert_eq!(out.lines().last(), Some("exactly once: yes"), "{out}");
}

/// The demo with a hard outage: the breaker cuts the attempts to its probes
/// and lets traffic back within one break once the API is up.
#[tokio::test]
async fn outage_hard_outage() {
    let svg = std::env::temp_dir().join(format!("tower-reissue-hard-{}.svg", std::process::id()));
    let svg_arg = svg.to_string_lossy().into_owned();
    let out = run(
        "outage",
        &[
            "--ops",
            "400",
            "--duration",
            "6",
            "--hard-outage",
            "6",
            "--json",
            "--quiet",
            "--svg",
            &svg_arg,
        ],
    )
    .await;
    let clients: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let client = |label: &str| {
        clients
            .iter()
            .find(|c| c["client"] == label)
            .unwrap_or_else(|| panic!("no {label}:\n{out}"))
    };
    let (plain, breaker) = (client("tower-reissue"), client("tower-reissue + breaker"));
    for c in [plain, breaker] {
        assert_eq!(c["duplicates"], 0, "{out}");
        assert_eq!(c["lost"], 0, "{out}");
    }
    // The demo breaks for 1 s, then 2 s after a failed probe: one probe per
    // break, at most two per interval.
    let after_open = breaker["attempts_after_breaker_opened"].as_u64().unwrap();
    let intervals = breaker["break_intervals_after_opening"].as_u64().unwrap();
    assert!(after_open <= 2 * intervals, "{out}");
    let with = breaker["attempts_during_hard_outage"].as_u64().unwrap();
    let without = plain["attempts_during_hard_outage"].as_u64().unwrap();
    assert!(with * 5 < without, "the breaker cuts the load:\n{out}");
    let back = breaker["recovered_after_ms"].as_u64().unwrap();
    assert!(back <= 2000, "back within one break after recovery:\n{out}");

    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    assert_eq!(chart.matches("<polyline").count(), 4, "four series");
    assert!(chart.contains("hard outage"), "the outage is marked");
    let _ = std::fs::remove_file(svg);
}

/// The demo against an API that ignores keys, as a script would read it.
#[tokio::test]
async fn outage_without_keys_as_json() {
    let svg = std::env::temp_dir().join(format!(
        "tower-reissue-outage-json-{}.svg",
        std::process::id()
    ));
    let svg_arg = svg.to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    let out = run(
        "outage",
        &["--api-without-keys", "--json", "--svg", &svg_arg],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let rows: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
    let row = |label: &str| -> &serde_json::Value {
        rows.as_array()
            .expect("one object per client")
            .iter()
            .find(|r| r["client"] == label)
            .unwrap_or_else(|| panic!("no row for {label}:\n{out}"))
    };
    let count = |row: &serde_json::Value, field: &str| row[field].as_u64().unwrap();
    let reconcile = row("tower-reissue + reconcile");
    let ops = count(reconcile, "ops");
    assert_eq!(count(reconcile, "duplicates"), 0, "{out}");
    assert!(
        count(reconcile, "lost") * 100 <= ops,
        "at most 1% lost:\n{out}"
    );
    assert!(count(reconcile, "probes") > 0, "{out}");
    assert!(
        count(row("naive loop (10x, fixed delay)"), "duplicates") > 0,
        "{out}"
    );
    assert!(count(row("no retries"), "lost") > 0, "{out}");
    for field in ["succeeded", "failed", "attempts_per_op"] {
        assert!(reconcile.get(field).is_some(), "{field} in {out}");
    }
    let _ = std::fs::remove_file(svg);
}
