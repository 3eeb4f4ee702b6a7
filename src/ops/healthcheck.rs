//! `trident healthcheck`: the image's HEALTHCHECK. One GET, exit 0 iff the answer is 200.
//!
//! The image carries no curl; the binary probes its own gateway. Default URL is the gateway's
//! liveness endpoint on loopback (`/health`, no auth), overridable for other ports.

use std::time::Duration;

use clap::Args;

use super::{check_http_url, OpsError};

/// Arguments of `trident healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// URL to probe; healthy iff it answers 200.
    // No `env =` here: every TRIDENT_* variable is a settings key (config/trident.toml layer).
    #[arg(long, default_value = "http://127.0.0.1:8000/health")]
    pub url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3.0)]
    pub timeout_secs: f64,
    /// Print nothing (the exit code says it all).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Probes `args.url`: `Ok(0)` on HTTP 200, `Ok(1)` on any other status, a refused
/// connection or a timeout; `Err` only for an unusable URL.
pub async fn run(args: &HealthcheckArgs) -> Result<i32, OpsError> {
    let url = check_http_url(&args.url)?;
    let timeout = Duration::from_secs_f64(args.timeout_secs.clamp(0.05, 300.0));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()?;
    let verdict = match client.get(url).send().await {
        Ok(resp) if resp.status() == reqwest::StatusCode::OK => Ok(()),
        Ok(resp) => Err(format!("HTTP {}", resp.status())),
        Err(e) if e.is_timeout() => Err(format!("no answer within {timeout:?}")),
        Err(e) if e.is_connect() => Err("connection refused".to_string()),
        Err(e) => Err(e.to_string()),
    };
    match verdict {
        Ok(()) => {
            if !args.quiet {
                println!("healthy: {}", args.url);
            }
            Ok(0)
        }
        Err(why) => {
            if !args.quiet {
                eprintln!("unhealthy: {}: {why}", args.url);
            }
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one canned HTTP response per connection on a loopback port.
    async fn server(status_line: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let resp = format!("HTTP/1.1 {status_line}\r\ncontent-length: 2\r\n\r\nok");
                let _ = sock.write_all(resp.as_bytes()).await;
            }
        });
        format!("http://{addr}/health")
    }

    fn args(url: String) -> HealthcheckArgs {
        HealthcheckArgs {
            url,
            timeout_secs: 2.0,
            quiet: true,
        }
    }

    #[tokio::test]
    async fn ok_is_healthy() {
        let url = server("200 OK").await;
        assert_eq!(run(&args(url)).await.expect("run"), 0);
    }

    #[tokio::test]
    async fn other_statuses_are_unhealthy() {
        for status in ["503 Service Unavailable", "204 No Content", "404 Not Found"] {
            let url = server(status).await;
            assert_eq!(run(&args(url)).await.expect("run"), 1, "{status}");
        }
    }

    #[tokio::test]
    async fn refused_connection_is_unhealthy() {
        // Bind then drop: the port is (almost certainly) closed afterwards.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let url = format!("http://127.0.0.1:{port}/health");
        assert_eq!(run(&args(url)).await.expect("run"), 1);
    }

    #[tokio::test]
    async fn bad_urls_are_errors() {
        for url in ["not a url", "https://127.0.0.1:8000/health"] {
            assert!(run(&args(url.to_string())).await.is_err(), "{url}");
        }
    }
}
