//! Two network namespaces joined by a veth pair, for tests that need a real
//! kernel, a real `nft` and real packets. Needs root.
//!
//! ```text
//!  protected (the PBX)                       attacker
//!  veth0 10.77.0.1/24          <───────>     veth0 10.77.0.2/24 (ATTACKER_V4)
//!        fd77:0:0:1::1/64                          10.77.0.3/24 (BYSTANDER_V4)
//!                                                  fd77:0:0:a::2, ::3 /64 (ATTACKER_V6*)
//!                                                  fd77:0:0:b::2/64 (BYSTANDER_V6)
//! ```
//!
//! Names are unique per process and call, so tests run in parallel, and
//! both namespaces (with the veth pair) are deleted on drop, also when the
//! test panics. Sockets are opened by a thread that has entered the
//! namespace, so no external tool is needed to send or receive.

#![allow(dead_code)] // Each test target uses part of the fixture.

use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const PROTECTED_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const BYSTANDER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
pub const PROTECTED_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 1, 0, 0, 0, 1);
pub const ATTACKER_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0xa, 0, 0, 0, 2);
/// Another address in the attacker's /64.
pub const ATTACKER_V6_NEIGHBOUR: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0xa, 0, 0, 0, 3);
pub const BYSTANDER_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0xb, 0, 0, 0, 2);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether the test runs as root; when not, says loudly that it is skipped
/// (and fails under `CI=true`).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    // Under CI a skip would pass unseen: there it is a failure.
    assert!(
        root || std::env::var_os("CI").is_none_or(|v| v != "true"),
        "{test} needs root (network namespaces and nftables), and CI=true does not allow skipping it"
    );
    if !root {
        // Straight to the stderr file descriptor: the test harness would
        // capture (and hide) `eprintln!`.
        let _ = writeln!(
            io::stderr(),
            "\n******** SKIPPED {test}: needs root (network namespaces and nftables); run `sudo cargo test` ********\n"
        );
    }
    root
}

/// One network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `astban-<role>-<pid>-<n>`.
    pub fn create(role: &str) -> io::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("astban-{role}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `firewall.nft` for running nft in this namespace.
    pub fn nft_command(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name, "nft"]
            .map(String::from)
            .to_vec()
    }

    /// `ip -n <ns> args...`, failing with its stderr.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `nft args...` inside the namespace, failing with its stderr.
    pub fn nft(&self, args: &[&str]) -> io::Result<Output> {
        let mut all = vec!["netns", "exec", self.name.as_str(), "nft"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The elements of an nftables set, as nft writes them (`10.77.0.2`,
    /// `fd77:0:0:a::/64`); empty if the table or set does not exist.
    pub fn set_elements(&self, table: &str, set: &str) -> io::Result<Vec<String>> {
        let out = match self.nft(&["-j", "list", "set", "inet", table, set]) {
            Ok(out) => out,
            Err(e) if e.to_string().contains("No such file or directory") => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
        let mut found = Vec::new();
        for object in json["nftables"].as_array().into_iter().flatten() {
            for elem in object["set"]["elem"].as_array().into_iter().flatten() {
                let val = if elem["elem"].is_object() {
                    &elem["elem"]["val"]
                } else {
                    elem
                };
                found.push(match val {
                    serde_json::Value::String(s) => s.clone(),
                    other => format!(
                        "{}/{}",
                        other["prefix"]["addr"].as_str().unwrap_or_default(),
                        other["prefix"]["len"]
                    ),
                });
            }
        }
        Ok(found)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it
    /// opens stay in the namespace wherever they are used later.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let ns = File::open(format!("/run/netns/{}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns only changes this thread's network
                    // namespace; the fd is valid for the call.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .map_err(|_| io::Error::other("namespace thread panicked"))?
        })
    }

    /// A UDP socket bound to `addr` in this namespace.
    pub fn udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        self.enter(|| UdpSocket::bind(addr))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A protected namespace and an attacker namespace joined by a veth pair.
#[derive(Debug)]
pub struct NetnsPair {
    pub protected: Netns,
    pub attacker: Netns,
}

impl NetnsPair {
    pub fn new() -> io::Result<NetnsPair> {
        let pair = NetnsPair {
            protected: Netns::create("pbx")?,
            attacker: Netns::create("atk")?,
        };
        let (p, a) = (&pair.protected, &pair.attacker);
        p.ip(&[
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            a.name(),
        ])?;
        p.ip(&["addr", "add", "10.77.0.1/24", "dev", "veth0"])?;
        p.ip(&["addr", "add", "fd77:0:0:1::1/64", "dev", "veth0", "nodad"])?;
        for addr in ["10.77.0.2/24", "10.77.0.3/24"] {
            a.ip(&["addr", "add", addr, "dev", "veth0"])?;
        }
        for addr in ["fd77:0:0:a::2/64", "fd77:0:0:a::3/64", "fd77:0:0:b::2/64"] {
            a.ip(&["addr", "add", addr, "dev", "veth0", "nodad"])?;
        }
        p.ip(&["link", "set", "veth0", "up"])?;
        a.ip(&["link", "set", "veth0", "up"])?;
        for prefix in ["fd77:0:0:a::/64", "fd77:0:0:b::/64"] {
            p.ip(&["-6", "route", "add", prefix, "dev", "veth0"])?;
        }
        a.ip(&["-6", "route", "add", "fd77:0:0:1::/64", "dev", "veth0"])?;
        Ok(pair)
    }

    /// Whether a UDP datagram from `from` (an attacker-side address)
    /// reaches `sink` (a socket in the protected namespace) within `wait`.
    pub fn udp_reaches(&self, from: IpAddr, sink: &UdpSocket, wait: Duration) -> io::Result<bool> {
        let sender = self.attacker.udp(SocketAddr::new(from, 0))?;
        let token = format!(
            "probe-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        sender.send_to(token.as_bytes(), sink.local_addr()?)?;
        sink.set_read_timeout(Some(wait))?;
        let mut buf = [0u8; 128];
        loop {
            match sink.recv_from(&mut buf) {
                // Older probes that were let through late are skipped.
                Ok((n, _)) if &buf[..n] == token.as_bytes() => return Ok(true),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn run(program: &str, args: &[&str]) -> io::Result<Output> {
    let out = Command::new(program).args(args).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
