//! Memory of the whole daemon (`astban run`, the real binary): idle; after
//! 100,000 distinct hosts have each failed once (kept in the engine, none
//! banned); with 100,000 active bans (`maxretry = 1`), and what `astban
//! bans --json` costs then. Log input with the dry-run firewall, so no root
//! is needed. The bans are made once through the log input and once
//! through the AMI input (a fake AMI over TCP sending 100,000
//! `InvalidPassword` events, each with its account and session).
//!
//! `cargo bench --bench daemon_rss`

#[path = "../support/fake_ami.rs"]
mod fake_ami;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOSTS: u32 = 100_000;

fn main() {
    run(None, None);
    run(Some(1), None);
    let fake = fake_ami::AmiThread::start(fake_ami::Script {
        after_login: vec![ami_failures(HOSTS)],
        ..fake_ami::Script::default()
    });
    run(Some(1), Some(fake.ami().addr().port()));
}

/// 100,000 `InvalidPassword` events, each from its own address, stamped now.
fn ami_failures(hosts: u32) -> Vec<u8> {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3f%z");
    let mut out = Vec::with_capacity(hosts as usize * 420);
    for i in 0..hosts {
        let ip = std::net::Ipv4Addr::from(0x6440_0000u32 + i);
        write!(
            out,
            "Event: InvalidPassword\r\nPrivilege: security,all\r\nEventTV: {now}\r\nSeverity: Error\r\n\
             Service: SIP\r\nEventVersion: 2\r\nAccountID: {i}\r\nSessionID: 0x7fcb{i:08x}\r\n\
             LocalAddress: IPV4/UDP/127.0.0.1/5060\r\nRemoteAddress: IPV4/UDP/{ip}/5060\r\n\
             Challenge: 45249bab\r\nReceivedChallenge: 45249bab\r\nReceivedHash: 6bb25df6b17e01ca6fca682b1b7c0ad2\r\n\r\n"
        )
        .expect("write");
    }
    out
}

/// One daemon: with `maxretry` set, every failing host is banned; with
/// `ami` (a port), through the AMI input instead of the log.
fn run(maxretry: Option<u32>, ami: Option<u16>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("messages");
    std::fs::File::create(&log).expect("log");
    let socket = dir.path().join("astban.sock");
    let config = dir.path().join("astban.toml");
    std::fs::write(
        &config,
        format!(
            "[input]\nmode = \"{}\"\n[log]\npath = \"{}\"\n[firewall]\nbackend = \"dry-run\"\n\
             [control]\nsocket = \"{}\"\n[state]\ndir = \"{}\"\n{}[jail]\nmax_tracked_hosts = 200000\n{}",
            if ami.is_some() { "ami" } else { "log" },
            log.display(),
            socket.display(),
            dir.path().join("state").display(),
            ami.map_or(String::new(), |port| format!(
                "[ami]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{}\"\nsecret = \"{}\"\nauth = \"md5\"\n",
                fake_ami::USERNAME,
                fake_ami::SECRET
            )),
            maxretry.map_or(String::new(), |m| format!("maxretry = {m}\n"))
        ),
    )
    .expect("config");

    let mut child = Command::new(env!("CARGO_BIN_EXE_astban"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("astban");
    let pid = child.id();
    // Ready once the control socket answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&socket).is_none() {
        assert!(Instant::now() < deadline, "astban did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (idle_rss, _) = memory(pid);
    if maxretry.is_none() {
        println!("idle:                  VmRSS {:6.1} MB", mb(idle_rss));
    }

    let start = Instant::now();
    if ami.is_none() {
        write_failures(&log, HOSTS);
    }
    let done = |s: serde_json::Value| match maxretry {
        None => s["engine"]["failures_counted"].as_u64(),
        Some(_) => s["engine"]["active_bans"].as_u64(),
    };
    while status(&socket).and_then(done) < Some(u64::from(HOSTS)) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not all counted or banned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    // Let the state be saved (a second after the last change), so that
    // the peak includes it.
    std::thread::sleep(Duration::from_secs(3));
    let s = status(&socket).expect("status");
    let (rss, hwm) = memory(pid);
    match maxretry {
        None => println!(
            "{HOSTS} failing hosts: VmRSS {:6.1} MB, peak {:6.1} MB (tracked {}, read and counted in {:.2} s)",
            mb(rss),
            mb(hwm),
            s["engine"]["tracked_hosts"],
            took.as_secs_f64()
        ),
        Some(_) => {
            println!(
                "{HOSTS} active bans ({}): VmRSS {:6.1} MB, peak {:6.1} MB (banned in {:.2} s)",
                if ami.is_some() { "AMI" } else { "log" },
                mb(rss),
                mb(hwm),
                took.as_secs_f64()
            );
            let listed = Command::new(env!("CARGO_BIN_EXE_astban"))
                .args(["bans", "--json", "--socket"])
                .arg(&socket)
                .output()
                .expect("bans");
            assert!(listed.status.success());
            let (after, hwm_after) = memory(pid);
            println!(
                "bans --json ({:.1} MB): VmRSS {:6.1} MB afterwards, peak {:6.1} MB (+{:.1} MB over the peak before)",
                listed.stdout.len() as f64 / 1e6,
                mb(after),
                mb(hwm_after),
                mb(hwm_after.saturating_sub(hwm))
            );
        }
    }

    // SAFETY: kill with our child's pid and a valid signal.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("astban: {line}");
        }
    }
    assert!(status.success(), "astban exited with {status}");
}

fn write_failures(log: &Path, hosts: u32) {
    let now = jiff::ZonedDateTime::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .expect("log"),
    );
    for i in 0..hosts {
        // 100.64.0.0/10 spreads 100,000 addresses without touching loopback.
        let ip = std::net::Ipv4Addr::from(0x6440_0000u32 + i);
        writeln!(
            out,
            "[{now}] NOTICE[2766] chan_sip.c: Registration from '<sip:{i}@pbx>' failed for '{ip}:5060' - Wrong password"
        )
        .expect("write");
    }
    out.flush().expect("flush");
}

fn status(socket: &Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_astban"))
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// (VmRSS, VmHWM) in kB.
fn memory(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}
