//! Where the appliance listens for each model (`model_ports`, docs/ARCHITECTURE.md "Model
//! ports"): with the setting on, the gateway takes every entry's `port` for a listener pinned
//! to that model and the local engines move to private loopback ports (`port +
//! engine_port_offset + replica`); off, the engines listen on the entries' ports as the seed
//! had them and the gateway only on its own port. Pure functions of the models file and the
//! settings, shared by start-up (`plan`, `preflight`) and reload (`control`).

use std::collections::BTreeMap;

use crate::config::{ModelEntry, ModelsFile, Problem, Settings};

/// The port scheme of one appliance, from its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPlan {
    /// The gateway listens on the entries' ports (`model_ports`).
    pub pinned: bool,
    /// Added to an entry's port for its engines when `pinned`.
    pub offset: u16,
    /// The gateway's own port and the metrics port (0: none), which no model may take.
    gateway_port: u16,
    metrics_port: u16,
}

impl PortPlan {
    pub fn new(settings: &Settings) -> PortPlan {
        PortPlan {
            pinned: settings.model_ports,
            offset: if settings.model_ports {
                settings.engine_port_offset
            } else {
                0
            },
            gateway_port: settings.port,
            metrics_port: settings.metrics_port,
        }
    }

    /// The port local replica `r` of `entry` listens on; `None` without a `port` or past 65535.
    pub fn engine_port(&self, entry: &ModelEntry, r: usize) -> Option<u16> {
        let r = u16::try_from(r).ok()?;
        entry.port?.checked_add(self.offset)?.checked_add(r)
    }

    /// The gateway's pinned listeners for `file` (port → model id; empty when off), or every
    /// problem: a port that is the gateway's own or the metrics port, two models on one
    /// port, an engine port past 65535 or on another model's pinned port.
    pub fn listeners(&self, file: &ModelsFile) -> Result<BTreeMap<u16, String>, Vec<Problem>> {
        let mut ports = BTreeMap::new();
        if !self.pinned {
            return Ok(ports);
        }
        let mut problems = Vec::new();
        for (id, e) in &file.models {
            let Some(port) = e.port else { continue };
            let clash = if port == self.gateway_port {
                Some("the gateway's own port (setting `port`)".to_string())
            } else if port != 0 && port == self.metrics_port {
                Some("the metrics port (setting `metrics_port`)".to_string())
            } else {
                ports
                    .insert(port, id.clone())
                    .map(|other| format!("also the port of model {other:?}"))
            };
            if let Some(why) = clash {
                problems.push(Problem {
                    path: format!("models.{id}.port"),
                    message: format!(
                        "port {port} is {why}; with model_ports the gateway listens on each \
                         model's port (set TRIDENT_MODEL_PORTS=false to keep the engines there)"
                    ),
                });
            }
        }
        for (id, e) in file.models.iter().filter(|(_, e)| e.upstream.is_none()) {
            for r in 0..e.replicas.max(1) {
                let message = match self.engine_port(e, r) {
                    None if e.port.is_some() => format!(
                        "the engine port of replica {r} (port + engine_port_offset {} + {r}) \
                         is past 65535; lower engine_port_offset",
                        self.offset
                    ),
                    Some(p) if ports.contains_key(&p) => format!(
                        "the engine port of replica {r} ({p} = port + engine_port_offset) is the \
                         pinned port of model {:?}; change engine_port_offset",
                        ports[&p]
                    ),
                    _ => continue,
                };
                problems.push(Problem {
                    path: format!("models.{id}.port"),
                    message,
                });
            }
        }
        if problems.is_empty() {
            Ok(ports)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ModelsFile {
        ModelsFile::parse(text, Default::default()).unwrap()
    }

    #[test]
    fn engines_move_by_the_offset_and_the_gateway_takes_the_entry_ports() {
        let f = file(
            r#"{"models": {"chat": {"path": "/x", "type": "chat", "port": 8001, "replicas": 2},
                           "emb": {"path": "/x", "type": "embedding", "port": 8003},
                           "far": {"type": "chat", "upstream": "http://h:8000", "port": 9001},
                           "near": {"type": "chat", "upstream": "http://h:8000"}}}"#,
        );
        let on = PortPlan::new(&Settings::default());
        let chat = &f.models["chat"];
        assert_eq!(on.engine_port(chat, 0), Some(18001));
        assert_eq!(on.engine_port(chat, 1), Some(18002));
        let pins = on.listeners(&f).unwrap();
        let pins: Vec<(u16, &str)> = pins.iter().map(|(p, m)| (*p, m.as_str())).collect();
        assert_eq!(pins, [(8001, "chat"), (8003, "emb"), (9001, "far")]);
        let off = PortPlan::new(&Settings {
            model_ports: false,
            ..Settings::default()
        });
        assert_eq!(off.engine_port(chat, 1), Some(8002));
        assert!(off.listeners(&f).unwrap().is_empty());
    }

    #[test]
    fn clashing_ports_are_named() {
        let f = file(
            r#"{"models": {"a": {"path": "/x", "type": "chat", "port": 8000},
                           "b": {"path": "/x", "type": "chat", "port": 9100},
                           "c": {"path": "/x", "type": "chat", "port": 7000},
                           "d": {"path": "/x", "type": "chat", "port": 17000},
                           "e": {"path": "/x", "type": "chat", "port": 60000},
                           "f": {"type": "chat", "upstream": "http://h:1", "port": 7000}}}"#,
        );
        let plan = PortPlan::new(&Settings {
            metrics_port: 9100,
            ..Settings::default()
        });
        let problems = plan.listeners(&f).unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |path: &str, words: &str| {
            assert!(
                problems
                    .iter()
                    .any(|p| p.path == path && p.message.contains(words)),
                "{path} {words}: {text:?}"
            )
        };
        has("models.a.port", "gateway's own port");
        has("models.b.port", "metrics port");
        has("models.f.port", "also the port of model \"c\"");
        has("models.c.port", "pinned port of model \"d\"");
        has("models.e.port", "past 65535");
        assert_eq!(problems.len(), 5, "{text:?}");
    }
}
