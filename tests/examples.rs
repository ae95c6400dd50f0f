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

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn reqwest_client() {
    run("reqwest_client", &[]).await;
}

/// The demo, shortened: its table must show the story.
#[tokio::test]
async fn outage() {
    let svg = std::env::temp_dir().join(format!("tower-reissue-outage-{}.svg", std::process::id()));
    let svg_arg = svg.to_string_lossy().into_owned();
    let out = run(
        "outage",
        &[
            "--ops",
            "400",
            "--duration",
            "6",
            "--quiet",
            "--svg",
            &svg_arg,
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
