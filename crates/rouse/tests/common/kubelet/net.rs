//! Pod networking for the test kubelet: a host bridge and, per pod, a network namespace joined
//! to it by a veth pair, so every pod has its own IP and binds its ports like a real pod.
//!
//! Everything is named with [`PREFIX`], so what an earlier run left behind can be found and
//! removed at start. Needs root (`ip netns`, `ip link`).

use std::net::Ipv4Addr;
use std::process::Command;

/// The prefix of every namespace and interface the test kubelet makes.
pub const PREFIX: &str = "rkc";
/// The host bridge (interface names are at most 15 characters).
pub const BRIDGE: &str = "rkc-br0";
/// The host's address on the bridge: pods reach the host there, and it is the Node's address.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The pod network's prefix length (10.244.0.0/16).
const PREFIX_LEN: u8 = 16;

/// Runs `ip` with `args`; its error output when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_lines(args: &[&str]) -> Vec<String> {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every namespace and interface with the prefix (an earlier run's, or this one's at
/// the end), killing what still runs in those namespaces first.
pub fn remove_all() {
    for line in ip_lines(&["netns", "list"]) {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name.starts_with(PREFIX) {
            remove_pod_netns(name);
        }
    }
    for line in ip_lines(&["-o", "link", "show"]) {
        // "12: rkch3@if11: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(PREFIX) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// The host bridge with the host's pod-network address, up.
pub fn bridge() -> Result<(), String> {
    if ip(&["link", "show", BRIDGE]).is_err() {
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    }
    let cidr = format!("{HOST_IP}/{PREFIX_LEN}");
    let has_addr = ip_lines(&["-o", "addr", "show", "dev", BRIDGE])
        .iter()
        .any(|l| l.contains(&cidr));
    if !has_addr {
        ip(&["addr", "add", &cidr, "dev", BRIDGE])?;
    }
    ip(&["link", "set", BRIDGE, "up"])
}

/// The `n`th pod address (from 0): 10.244.0.2, ..., 10.244.0.254, 10.244.1.2, ..., using
/// .2 to .254 of every /24, so no address looks like a network, broadcast or the host's.
pub fn pod_ip(n: u32) -> Ipv4Addr {
    let block = n / 253;
    let host = n % 253 + 2;
    Ipv4Addr::new(10, 244, (block % 256) as u8, host as u8)
}

/// One pod's namespace and veth pair.
pub struct PodNet {
    pub netns: String,
    pub ip: Ipv4Addr,
    host_if: String,
}

impl PodNet {
    /// Makes namespace `rkc-pod-{n}` with `eth0` at `pod_ip(n)`, its peer on the bridge,
    /// loopback up and the default route through the host.
    pub fn create(n: u32) -> Result<PodNet, String> {
        let netns = format!("{PREFIX}-pod-{n}");
        let host_if = format!("{PREFIX}h{n}");
        let peer = format!("{PREFIX}p{n}");
        let ip_addr = pod_ip(n);
        let net = PodNet {
            netns: netns.clone(),
            ip: ip_addr,
            host_if: host_if.clone(),
        };
        let cidr = format!("{ip_addr}/{PREFIX_LEN}");
        let host = HOST_IP.to_string();
        let steps: [&[&str]; 10] = [
            &["netns", "add", &netns],
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
            ],
            &["link", "set", &host_if, "master", BRIDGE],
            &["link", "set", &host_if, "up"],
            &["link", "set", &peer, "netns", &netns],
            &["-n", &netns, "link", "set", &peer, "name", "eth0"],
            &["-n", &netns, "addr", "add", &cidr, "dev", "eth0"],
            &["-n", &netns, "link", "set", "eth0", "up"],
            &["-n", &netns, "link", "set", "lo", "up"],
            &["-n", &netns, "route", "add", "default", "via", &host],
        ];
        for step in steps {
            if let Err(e) = ip(step) {
                net.remove();
                return Err(e);
            }
        }
        Ok(net)
    }

    /// The path `setns(2)` opens to enter the namespace.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// Deletes the veth pair and the namespace (killing what still runs in it).
    pub fn remove(&self) {
        let _ = ip(&["link", "del", &self.host_if]);
        remove_pod_netns(&self.netns);
    }
}

#[allow(unsafe_code)]
fn remove_pod_netns(name: &str) {
    for pid in ip_lines(&["netns", "pids", name]) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill(2) with a pid read from the namespace; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = ip(&["netns", "del", name]);
}
