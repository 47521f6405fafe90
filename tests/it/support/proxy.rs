//! A real forward proxy: Debian's tinyproxy, run with the test's own config
//! (every CONNECT port allowed; its packaged default allows only 443 and
//! 563), its log read to see what it was asked.

use std::process::Command;
use std::time::Duration;

use super::peers::{free_port, peers, Proc, TempDir};

pub struct Tinyproxy {
    /// `http://HOST:PORT`, for HTTP_PROXY and HTTPS_PROXY.
    pub url: String,
    log: std::path::PathBuf,
    _proc: Proc,
    _dir: TempDir,
}

impl Tinyproxy {
    /// Listening on `host` (a loopback address).
    pub async fn start(host: &str) -> Self {
        let dir = TempDir::new("tinyproxy");
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen {host}\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\nMaxClients 100\nAllow 127.0.0.0/8\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(peers().path("TINYPROXY"));
        cmd.arg("-d").arg("-c").arg(&conf);
        let proc = Proc::spawn(cmd, dir.join("stderr.log"));
        for _ in 0..150 {
            if tokio::net::TcpStream::connect((host, port)).await.is_ok() {
                return Self { url: format!("http://{host}:{port}"), log, _proc: proc, _dir: dir };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("tinyproxy did not listen on {host}:{port}: {}", proc.output());
    }

    /// The requests it was asked to carry: `GET http://…` and `CONNECT host:port`.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("]: Request (file descriptor ").map(|(_, r)| r.split_once("): ").map_or(r, |(_, r)| r).to_string()))
            .collect()
    }
}
