//! Remote replicas: one gateway fronting two other appliances (engine hosts) over TLS, with
//! the upstreams' CA and API key. Traffic spreads over both hosts; killing one loses no
//! request that had not started, `/ready` says `degraded` meanwhile, and the model's replica
//! table shows the host gone.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{client, get_json, poll, Appliance, Opts};

const HOST_KEY: &str = "sk-engine-host";

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it (PEM).
struct Certs {
    ca: String,
    cert: String,
    key: String,
}

fn certs() -> Certs {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "trident test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    Certs {
        ca: ca.pem(),
        cert: leaf.pem(),
        key: leaf_key.serialize_pem(),
    }
}

/// A client that trusts the test CA.
fn tls_client(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

/// Requests the engine host answered, from its own gateway metrics.
async fn served(https: &reqwest::Client, base: &str) -> f64 {
    let Ok(r) = https
        .get(format!("{base}/metrics"))
        .bearer_auth(HOST_KEY)
        .send()
        .await
    else {
        return -1.0;
    };
    let text = r.text().await.unwrap_or_default();
    crate::common::metric_value(
        &text,
        "trident_requests_total",
        &[
            ("component", "gateway"),
            ("route", "/v1/embeddings"),
            ("status", "200"),
        ],
    )
}

#[tokio::test]
async fn a_gateway_fronts_two_engine_hosts_over_tls_and_survives_losing_one() {
    let certs = certs();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (ca, cert, key) = (
        write("ca.pem", &certs.ca),
        write("cert.pem", &certs.cert),
        write("key.pem", &certs.key),
    );
    let key_file = write("upstream.key", &format!("{HOST_KEY}\n"));
    let https = tls_client(&certs.ca);
    let host_env = [
        ("TRIDENT_TLS_CERT_FILE", cert.as_str()),
        ("TRIDENT_TLS_KEY_FILE", key.as_str()),
    ];
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let host = Appliance::start(
            json!({"embed": {"type": "embedding"}}),
            Opts {
                api_keys: &[HOST_KEY],
                env: &host_env,
                no_wait: true,
                ..Default::default()
            },
        )
        .await;
        let base = host.base.replacen("http://", "https://", 1);
        // The engine host answers only over TLS, with the CA's certificate.
        let ready = poll(Duration::from_secs(20), || async {
            let r = https.get(format!("{base}/ready")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "engine host not ready:\n{}",
            host.log_text()
        );
        // A plain-HTTP request to the TLS port gets no HTTP answer.
        let plain = client().get(host.url("/health")).send().await;
        assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
        hosts.push((host, base));
    }
    let front = Appliance::start(
        json!({"embed": {"type": "embedding",
                         "upstream": [hosts[0].1.clone(), hosts[1].1.clone()],
                         "upstream_api_key_file": key_file}}),
        Opts {
            env: &[
                ("TRIDENT_UPSTREAM_CA_FILE", ca.as_str()),
                ("TRIDENT_REQUEST_TIMEOUT_SECS", "5"),
            ],
            ..Default::default()
        },
    )
    .await;
    let embed = |i: usize| {
        let rb = client()
            .post(front.url("/v1/embeddings"))
            .json(&json!({"model": "embed", "input": format!("text {i}")}));
        async move { rb.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    for i in 0..20 {
        assert_eq!(embed(i).await, 200, "{}", front.log_text());
    }
    // Both hosts took a share (least outstanding balances idle replicas in turn).
    let before: Vec<f64> =
        futures::future::join_all(hosts.iter().map(|h| served(&https, &h.1))).await;
    assert!(before.iter().all(|&n| n >= 1.0), "per host: {before:?}");
    assert_eq!(before.iter().sum::<f64>(), 20.0, "per host: {before:?}");

    // Host 1 dies. Requests that had not started go to host 0; none fails.
    let (mut lost, _) = hosts.remove(1);
    lost.child.kill().unwrap();
    lost.child.wait().unwrap();
    let killed = Instant::now();
    // Twenty at once (each may find the dead host first and be retried once on the live
    // one, within the retry budget), then twenty one by one.
    let mut statuses = futures::future::join_all((0..20).map(embed)).await;
    for i in 20..40 {
        statuses.push(embed(i).await);
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let degraded = poll(Duration::from_secs(15), || async {
        let r = get_json(&front, "/ready", None).await;
        (r["models"]["embed"]["state"] == "degraded").then_some(r)
    })
    .await;
    assert!(
        degraded.is_some(),
        "{}",
        get_json(&front, "/ready", None).await
    );
    eprintln!(
        "REMOTE host lost: 40/40 requests answered, degraded after {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    let after = served(&https, &hosts[0].1).await;
    assert_eq!(after, before[0] + 40.0);
    let info: Value = get_json(&front, "/system/info", None).await;
    let urls: Vec<&str> = info["engines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["url"].as_str())
        .collect();
    assert_eq!(urls.len(), 2, "{info}");

    // A gateway that does not trust the hosts' CA never routes to them.
    let untrusting = Appliance::start(
        json!({"embed": {"type": "embedding", "upstream": hosts[0].1.clone(),
                         "upstream_api_key_file": key_file}}),
        Opts {
            no_wait: true,
            ..Default::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = get_json(&untrusting, "/ready", None).await;
    assert_ne!(r["models"]["embed"]["state"], "ready", "{r}");
    let status = client()
        .post(untrusting.url("/v1/embeddings"))
        .json(&json!({"model": "embed", "input": "x"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);
}
