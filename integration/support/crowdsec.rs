//! A real CrowdSec LAPI on loopback: Debian 12's `crowdsec` 1.4.6,
//! unpacked (never installed) by `.ci/run` into `target/crowdsec/root`
//! (or `ASTBAN_CROWDSEC_ROOT`), started with a private config, its own port
//! and sqlite db in a tempdir, no agent and no CAPI. Killed on drop, also
//! when the test panics.
#![allow(dead_code)] // Each test target uses part of the fixture.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the LAPI may take to listen (a loaded CI machine).
const START: Duration = Duration::from_secs(30);

/// Where `.ci/run` unpacks the package.
fn root() -> PathBuf {
    std::env::var_os("ASTBAN_CROWDSEC_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/crowdsec/root"))
}

/// The unpacked package, or `None` (a loud skip; a failure under CI=true).
pub fn require_crowdsec(test: &str) -> Option<PathBuf> {
    let root = root();
    let found = root.join("usr/bin/crowdsec").is_file() && root.join("usr/bin/cscli").is_file();
    assert!(
        found || std::env::var_os("CI").is_none_or(|v| v != "true"),
        "{test} needs crowdsec unpacked in {} (`.ci/run` does it: apt-get download crowdsec && dpkg -x), and CI=true does not allow skipping it",
        root.display()
    );
    if !found {
        let _ = writeln!(
            std::io::stderr(),
            "\n******** SKIPPED {test}: no crowdsec in {} (run `.ci/run`, or: cd target/crowdsec && apt-get download crowdsec && dpkg -x crowdsec_*.deb root) ********\n",
            root.display()
        );
    }
    found.then_some(root)
}

/// A running LAPI.
pub struct Lapi {
    root: PathBuf,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Lapi {
    /// Writes the private config and starts the LAPI on a free port, with
    /// a machine for cscli itself (`cscli decisions` needs one).
    pub fn start(root: &Path) -> Lapi {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let d = dir.path().display();
        let etc = root.join("etc/crowdsec");
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        std::fs::create_dir_all(dir.path().join("hub")).expect("hub dir");
        let config = format!(
            r#"common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: {d}
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: {etc}/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/notifications/
  plugin_dir: {d}/plugins/
crowdsec_service:
  acquisition_path: {d}/acquis.yaml
cscli:
  output: human
db_config:
  log_level: info
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: true
api:
  client:
    credentials_path: {d}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: {addr}
    profiles_path: {etc}/profiles.yaml
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
"#,
            etc = etc.display()
        );
        std::fs::write(dir.path().join("config.yaml"), config).expect("config");
        let mut lapi = Lapi {
            root: root.to_path_buf(),
            dir,
            addr,
            child: None,
        };
        lapi.run();
        lapi.cscli(&[
            "machines",
            "add",
            "cscli-local",
            "--password",
            "cscli-local-password-1234",
            "-f",
            &lapi
                .dir
                .path()
                .join("local_api_credentials.yaml")
                .display()
                .to_string(),
            "--url",
            &lapi.url(),
            "--force",
        ]);
        lapi
    }

    /// Starts the LAPI (again) and waits until it listens.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("crowdsec.log")).expect("log");
        let child = Command::new(self.root.join("usr/bin/crowdsec"))
            .args(["-no-cs", "-no-capi", "-c"])
            .arg(self.config())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start crowdsec");
        self.child = Some(child);
        let deadline = Instant::now() + START;
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("crowdsec exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "crowdsec did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the LAPI (its db stays, for `run` to take up again).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// What the LAPI logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("crowdsec.log")).unwrap_or_default()
    }

    /// `cscli -c <config> args...`, failing the test with its output.
    pub fn cscli(&self, args: &[&str]) -> Output {
        let out = Command::new(self.root.join("usr/bin/cscli"))
            .arg("-c")
            .arg(self.config())
            .args(args)
            .output()
            .expect("run cscli");
        assert!(
            out.status.success(),
            "cscli {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Adds a machine (push) with `password`.
    pub fn add_machine(&self, id: &str, password: &str) {
        self.cscli(&[
            "machines",
            "add",
            id,
            "--password",
            password,
            "-f",
            "/dev/null",
        ]);
    }

    /// Adds a bouncer (pull) with `key`.
    pub fn add_bouncer(&self, name: &str, key: &str) {
        self.cscli(&["bouncers", "add", name, "-k", key]);
    }

    /// `cscli decisions list -a -o json`, flattened to the decisions.
    /// `-a`: without it 1.4.6 lists only the origins it knows (`crowdsec`,
    /// `cscli`, ...), not `astban`.
    pub fn decisions(&self) -> Vec<serde_json::Value> {
        let out = self.cscli(&["decisions", "list", "-a", "-o", "json"]);
        serde_json::from_slice::<Option<Vec<serde_json::Value>>>(&out.stdout)
            .expect("decisions JSON")
            .unwrap_or_default()
            .into_iter()
            .flat_map(|alert| alert["decisions"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}
