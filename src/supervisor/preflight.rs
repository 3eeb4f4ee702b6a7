//! Checks before anything is spawned, so a bad setup is one clear error instead of a crash
//! loop: engine ports that are already taken, and the start order (smallest models first).
//! Missing model paths are reported by `ModelsFile::load` with path checks on.

use std::net::TcpListener;
use std::path::Path;

use super::ports::PortPlan;
use crate::config::{ModelsFile, Problem};

/// Every local replica's engine port (`ports`: the entry's, or its private one with
/// `model_ports`) that cannot be bound on `host`.
pub fn taken_ports(file: &ModelsFile, host: &str, ports: &PortPlan) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (id, e) in file.models.iter().filter(|(_, e)| e.upstream.is_none()) {
        for r in 0..e.replicas.max(1) {
            let Some(port) = ports.engine_port(e, r) else {
                continue;
            };
            if let Err(err) = TcpListener::bind((host, port)) {
                let which = if ports.pinned { "engine port" } else { "port" };
                problems.push(Problem {
                    path: format!("models.{id}.port"),
                    message: format!(
                        "{which} {port} (model {id:?}, replica {r}) cannot be used: {err}"
                    ),
                });
            }
        }
    }
    problems
}

/// A free loopback port for an engine (`--ephemeral-engine-ports`). It stays unbound until
/// the engine binds it, so it is drawn at random from below the kernel's ephemeral range:
/// the client sockets and `:0` listeners of everything else on the host draw from inside
/// that range and cannot take it in the meantime.
pub fn free_port() -> std::io::Result<u16> {
    use rand::Rng;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > PRIVATE_PORTS_FROM + 1000 {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let port = rng.gen_range(PRIVATE_PORTS_FROM..low);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Lowest port `free_port` draws from (above the well-known service ports users configure).
const PRIVATE_PORTS_FROM: u16 = 20000;

/// Bytes under a model path (a file, or a directory tree up to a few levels, following
/// the symlinks of a Hugging Face cache).
pub fn model_size(path: &Path) -> u64 {
    fn walk(p: &Path, depth: usize) -> u64 {
        let Ok(meta) = std::fs::metadata(p) else {
            return 0;
        };
        if meta.is_file() {
            return meta.len();
        }
        if depth == 0 || !meta.is_dir() {
            return 0;
        }
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| walk(&e.path(), depth - 1)).sum())
            .unwrap_or(0)
    }
    walk(path, 6)
}

/// Model ids in start order: smallest on disk first (remote upstreams cost nothing).
pub fn start_order(file: &ModelsFile) -> Vec<String> {
    let mut ids: Vec<(u64, &String)> = file
        .models
        .iter()
        .map(|(id, e)| {
            let size = match (&e.upstream, &e.path) {
                (None, Some(p)) => model_size(p),
                _ => 0,
            };
            (size, id)
        })
        .collect();
    ids.sort();
    ids.into_iter().map(|(_, id)| id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_ports_are_named_and_order_is_by_size() {
        let busy = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::create_dir(&big).unwrap();
        std::fs::write(big.join("w"), vec![0u8; 4096]).unwrap();
        let small = dir.path().join("small.gguf");
        std::fs::write(&small, vec![0u8; 16]).unwrap();
        let text = format!(
            r#"{{"models": {{"a": {{"path": {big:?}, "type": "embedding", "port": {port}}},
                "b": {{"path": {small:?}, "type": "chat", "port": {free}}}}}}}"#,
            free = free_port().unwrap()
        );
        let file = ModelsFile::parse(&text, Default::default()).unwrap();
        let off = crate::config::Settings {
            model_ports: false,
            ..Default::default()
        };
        let p = taken_ports(&file, "127.0.0.1", &PortPlan::new(&off));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "models.a.port");
        assert!(p[0].message.contains(&port.to_string()));
        assert_eq!(start_order(&file), ["b", "a"]);
        // With model ports the engines' ports are the private ones: the busy entry port is
        // the gateway's (checked when it binds), and a busy private port is named.
        let on = PortPlan::new(&crate::config::Settings {
            engine_port_offset: 1,
            ..Default::default()
        });
        let text = format!(
            r#"{{"models": {{"a": {{"path": {big:?}, "type": "embedding", "port": {port}}},
                "b": {{"path": {small:?}, "type": "chat", "port": {below}}}}}}}"#,
            below = port - 1
        );
        let file = ModelsFile::parse(&text, Default::default()).unwrap();
        let p = taken_ports(&file, "127.0.0.1", &on);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "models.b.port");
        assert!(p[0].message.contains(&format!("engine port {port}")));
    }
}
