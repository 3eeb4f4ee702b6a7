//! f18–f19: the machine's resources run out. The disk holding the supervisor's log is
//! full (every write fails with ENOSPC), and the kernel's OOM killer ends an engine that
//! outgrows the memory limit of the cgroup (container) the appliance runs in.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use super::{chat_status, engine, other_model_serves, record, wait_restarted, FAST};
use crate::gateway::{client, poll, Appliance, Opts};

#[tokio::test]
async fn f18_a_full_log_disk_neither_stops_serving_nor_restarts() {
    let app = Appliance::start(
        json!({"chat": {"type": "chat"}, "embed": {"type": "embedding"}}),
        Opts {
            env: FAST,
            log_to_dev_full: true,
            ..Default::default()
        },
    )
    .await;
    // Logging happens on every request and every engine event; none of it may fail them.
    for _ in 0..20 {
        assert_eq!(chat_status(&app).await, 200);
    }
    let (pid, _) = engine(&app, "chat").await;
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    other_model_serves(&app).await;
    let back = wait_restarted(&app, "chat", 1, killed, Duration::from_secs(10)).await;
    let mut app = app;
    assert!(
        app.child.try_wait().unwrap().is_none(),
        "the supervisor died writing to a full disk"
    );
    record(
        "f18",
        "log disk full (stderr is /dev/full), engine killed meanwhile",
        &[("serving again after", back)],
    );
}

/// A fresh memory cgroup of `limit_mb`, removed on drop; `None` where this process may not
/// create one (not root, or no writable cgroup hierarchy).
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(limit_mb: u64) -> Option<MemoryCgroup> {
        let name = format!("trident-f19-{}", std::process::id());
        let bytes = (limit_mb << 20).to_string();
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (dir, files): (PathBuf, &[&str]) = if v2 {
            (
                PathBuf::from("/sys/fs/cgroup").join(name),
                &["memory.max", "memory.swap.max"],
            )
        } else {
            (
                PathBuf::from("/sys/fs/cgroup/memory").join(name),
                &["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
            )
        };
        std::fs::create_dir(&dir).ok()?;
        let cg = MemoryCgroup(dir);
        std::fs::write(cg.0.join(files[0]), &bytes).ok()?;
        // Without swap the limit is a hard one (the swap file may be absent: then it is).
        let _ = std::fs::write(cg.0.join(files[1]), if v2 { "0" } else { &bytes });
        Some(cg)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The cgroup can only go once its processes have (the appliance is killed first).
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test]
async fn f19_the_oom_killer_ends_an_engine_and_the_rest_keeps_serving() {
    let Some(cg) = MemoryCgroup::new(400) else {
        eprintln!("f19 skipped: no writable memory cgroup here (needs root)");
        return;
    };
    let app = Appliance::start(
        json!({"chat": {"type": "chat"}, "embed": {"type": "embedding"}}),
        Opts {
            env: FAST,
            // The chat engine loads a "model" larger than the cgroup holds.
            behaviour: Some(json!({"chat": "alloc_mb=1024"})),
            cgroup: Some(cg.0.clone()),
            no_wait: true,
            ..Default::default()
        },
    )
    .await;
    let started = Instant::now();
    // Killed by the kernel, reported as such, restarted until the crash-loop cutoff.
    let killed = poll(Duration::from_secs(30), || async {
        let e = app.engines("chat", None).await.remove(0);
        let err = e["last_error"].as_str().unwrap_or("").to_string();
        (err.contains("SIGKILL") && err.contains("out-of-memory")).then_some(err)
    })
    .await;
    let noticed = started.elapsed();
    assert!(
        killed.is_some(),
        "no OOM kill reported: {:?}\n{}",
        app.engines("chat", None).await,
        app.log_text()
    );
    // The embedding engine and the supervisor (small, in the same cgroup) live on.
    let serves = poll(Duration::from_secs(10), || async {
        let r = client()
            .post(app.url("/v1/embeddings"))
            .json(&json!({"model": "embed", "input": "still here"}))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(serves.is_some(), "the other model stopped serving");
    let failed = poll(Duration::from_secs(60), || async {
        let e = app.engines("chat", None).await.remove(0);
        (e["state"] == "failed").then_some(e)
    })
    .await
    .expect("the crash loop did not end in failed");
    assert!(failed["restarts"].as_u64().unwrap() >= 4, "{failed}");
    assert_eq!(chat_status(&app).await, 503);
    other_model_serves(&app).await;
    let gave_up = started.elapsed();
    drop(app);
    drop(cg);
    record(
        "f19",
        "OOM killer ends an engine over its cgroup's memory limit",
        &[
            ("OOM kill reported after", noticed),
            ("failed after", gave_up),
        ],
    );
}

#[tokio::test]
async fn engine_output_that_is_not_utf8_is_forwarded_lossily_and_never_blocks_the_engine() {
    let app = Appliance::start(
        json!({"chat": {"type": "chat"}}),
        Opts {
            behaviour: Some(json!({"chat": "garbage_log"})),
            ..Default::default()
        },
    )
    .await;
    // The engine wrote 256 KiB (four pipe buffers) of invalid UTF-8 before listening: it
    // became ready, so its output kept being read, and the line after it arrived.
    assert_eq!(chat_status(&app).await, 200);
    let log = poll(Duration::from_secs(5), || async {
        let log = app.log_text();
        log.contains("mock: after the garbage").then_some(log)
    })
    .await
    .expect("the line after the garbage was not forwarded");
    assert!(
        log.contains("\u{fffd}\u{fffd}x\u{fffd}"),
        "not replaced lossily"
    );
}
