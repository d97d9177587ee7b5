//! A DNS server on loopback that the test controls: Debian's dnsmasq on a
//! port of its own, answering only from a hosts file the test rewrites
//! (then SIGHUP, on which dnsmasq re-reads it). Killed on drop, so a
//! failed test leaves none behind.

// Each test target uses a different part of this helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Child,
    /// The UDP and TCP port it answers on, on 127.0.0.1.
    pub port: u16,
    hosts: PathBuf,
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Dnsmasq {
    /// Starts dnsmasq answering from `hosts` (a hosts file's text) in
    /// `dir`. `None` when dnsmasq is not installed, outside CI only: under
    /// `CI=true` a missing dnsmasq fails the test (`.ci/run` installs it).
    pub fn start(dir: &Path, hosts: &str) -> Option<Dnsmasq> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "dnsmasq is missing: apt-get install dnsmasq-base (.ci/run does)"
            );
            eprintln!("SKIPPED: dnsmasq is not installed (apt-get install dnsmasq-base)");
            return None;
        };
        let path = dir.join("dns-hosts");
        std::fs::write(&path, hosts).expect("hosts file");
        // A free port now may be taken by a parallel test before dnsmasq
        // binds it: dnsmasq then exits at once, and another port is tried.
        for _ in 0..20 {
            let port = UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("a free port")
                .port();
            let mut command = Command::new(&bin);
            command
                .arg("--keep-in-foreground")
                .arg("--log-facility=-")
                .arg(format!("--port={port}"))
                .arg("--listen-address=127.0.0.1")
                .arg("--bind-interfaces")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg("--pid-file=")
                .arg(format!("--addn-hosts={}", path.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            // As root dnsmasq would switch to nobody, who cannot re-read a
            // hosts file in a root-only temp dir on SIGHUP.
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                command.arg("--user=root");
            }
            let mut child = command.spawn().expect("spawn dnsmasq");
            let stderr = child.stderr.take().expect("stderr");
            let mut lines = BufReader::new(stderr).lines();
            // dnsmasq says "started" once its sockets are bound, or exits.
            let started = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains("started"));
            if started {
                // Keep draining its log so that it never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
                return Some(Dnsmasq {
                    child,
                    port,
                    hosts: path,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start on any of 20 free ports");
    }

    /// `127.0.0.1:PORT`, for `jail.ignore_names_servers`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the answers: rewrites the hosts file and makes dnsmasq
    /// re-read it (and forget its cache).
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("hosts file");
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP);
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
