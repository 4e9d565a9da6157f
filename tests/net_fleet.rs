//! Fleets with a network (`[fleet] network = { bridge, subnet }`): tandem
//! makes the bridge and a tap per networked VM, hands out addresses, puts
//! another VM's address into a command line (`${web.ip}`), and removes
//! what it made when the fleet ends. Needs root (CI is root): without it
//! the test fails, naming what is missing.

use std::path::{Path, PathBuf};

use tandem_tests::{image_path, require_kvm, tandem};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-netfleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn fetch_finds_httpd_by_its_address_on_the_fleets_bridge() {
    fetch_fleet("fetch", &[]);
}

#[test]
fn a_fleet_that_drops_to_a_user_attaches_the_taps_made_for_it() {
    // The taps are made as root and given to `nobody` before the drop.
    fetch_fleet("user", &["--user", "nobody"]);
}

/// Runs httpd and fetch on a fleet network, with `extra` options.
fn fetch_fleet(name: &str, extra: &[&str]) {
    require_kvm();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (CAP_NET_ADMIN) for the fleet's bridge and taps"
    );
    let pid = std::process::id();
    let n = u32::from(!extra.is_empty());
    let bridge = format!("tdf{}x{n}", pid % 100_000);
    let subnet = format!("10.94.{}.0/24", (pid + n) % 250);
    assert!(
        !interface_exists(&bridge),
        "{bridge} exists before the test"
    );
    let dir = scratch(name);
    let config = dir.join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            r#"[fleet]
network = {{ bridge = "{bridge}", subnet = "{subnet}" }}

[[vm]]
name = "web"
image = "{httpd}"
memory = "16M"
boot_timeout = "30s"

[[vm]]
name = "client"
image = "{fetch}"
memory = "16M"
boot_timeout = "30s"
after = ["web"]
cmdline = "${{web.ip}}:80"
"#,
            httpd = image_path("httpd").display(),
            fetch = image_path("fetch").display(),
        ),
    )
    .unwrap();
    let consoles = dir.join("console");
    // Written by the fleet's user, whoever that is.
    std::fs::create_dir_all(&consoles).unwrap();
    std::fs::set_permissions(
        &consoles,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut args = vec![
        "fleet",
        config.to_str().unwrap(),
        "--stop-when-ready",
        "--stop-after",
        "120s",
        "--console-dir",
        consoles.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let run = tandem(&args);
    let read = |name: &str| {
        std::fs::read_to_string(consoles.join(format!("{name}.log"))).unwrap_or_default()
    };
    let (web, client) = (read("web"), read("client"));
    let all = format!("{}\n--- web:\n{web}\n--- client:\n{client}", run.stderr);
    assert_eq!(run.code, Some(0), "{all}");
    // httpd got the pool's first address, fetch the next, and the client
    // was told httpd's (the gateway is the bridge, .1).
    let net = subnet.trim_end_matches("0/24");
    assert!(web.contains(&format!("serving http://{net}2:80/")), "{all}");
    assert!(client.contains("fetch: HTTP/1.1 200 OK"), "{all}");
    assert!(client.contains("<h1>Hello from Tandem!</h1>"), "{all}");
    assert!(
        run.stderr.contains(&format!("made bridge {bridge}")),
        "{all}"
    );
    // Removed at the end: the bridge and both taps.
    for name in [bridge.clone(), format!("{bridge}-0"), format!("{bridge}-1")] {
        assert!(
            !interface_exists(&name),
            "{name} is still there after the fleet ended"
        );
    }
}

#[test]
fn a_reference_to_a_vm_outside_after_is_refused_at_its_place() {
    let dir = scratch("refs");
    let config = dir.join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "[fleet]\nnetwork = {{ bridge = \"tdfx0\", subnet = \"10.94.251.0/24\" }}\n\
             [[vm]]\nname = \"web\"\nimage = \"{httpd}\"\n\
             [[vm]]\nname = \"client\"\nimage = \"{fetch}\"\ncmdline = \"${{web.ip}}:80 ${{nobody.ip}}\"\n",
            httpd = image_path("httpd").display(),
            fetch = image_path("fetch").display(),
        ),
    )
    .unwrap();
    let run = tandem(&["fleet", config.to_str().unwrap(), "--check"]);
    assert_eq!(
        run.code,
        Some(i32::from(tandem::exit_code::VMM_ERROR)),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("9:12: vm `client`: `cmdline`: `${web.ip}`: `web` is not in `after`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("9:25: vm `client`: `cmdline`: `${nobody.ip}` names no VM of this fleet"),
        "{}",
        run.stderr
    );
    assert!(!interface_exists("tdfx0"));
}

#[test]
fn the_plan_shows_addresses_taps_limits_and_the_filled_in_cmdline() {
    let dir = scratch("plan");
    let config = dir.join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "[fleet]\nnetwork = {{ bridge = \"tdfy0\", subnet = \"10.94.252.0/24\", rate = \"10M\", pps = \"10k\" }}\n\
             [[vm]]\nname = \"web\"\ncount = 2\nimage = \"{httpd}\"\n\
             [[vm]]\nname = \"hello\"\nimage = \"{hello}\"\n\
             [[vm]]\nname = \"client\"\nimage = \"{fetch}\"\nafter = [\"web\"]\ncmdline = \"${{web-1.ip}}:80\"\nnet = {{ rate = \"1M\" }}\n",
            httpd = image_path("httpd").display(),
            hello = image_path("hello").display(),
            fetch = image_path("fetch").display(),
        ),
    )
    .unwrap();
    let run = tandem(&["fleet", config.to_str().unwrap(), "--check"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = &run.stdout;
    assert!(
        out.contains("network: bridge tdfy0 at 10.94.252.1/24"),
        "{out}"
    );
    // The networked VMs in order; hello declares no device and gets none.
    // The fleet's limits are the defaults; the client's own rate wins.
    for (vm, addr, tap, rate) in [
        ("web-0", "10.94.252.2", "tdfy0-0", 10 << 20),
        ("web-1", "10.94.252.3", "tdfy0-1", 10 << 20),
        ("client", "10.94.252.4", "tdfy0-2", 1 << 20),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(vm))
            .unwrap_or_else(|| panic!("no line for {vm}: {out}"));
        assert!(
            line.contains(&format!("net {addr} on {tap}, {rate} B/s, 10000 frames/s")),
            "{line}"
        );
    }
    let hello = out
        .lines()
        .find(|l| l.trim_start().starts_with("hello"))
        .unwrap();
    assert!(!hello.contains("net "), "{hello}");
    assert!(out.contains("cmdline 10.94.252.3:80"), "{out}");
    assert!(!interface_exists("tdfy0"), "--check made the bridge");
}

#[test]
fn without_net_admin_a_missing_bridge_is_refused_with_the_commands() {
    tandem_tests::require_tool("setpriv", "util-linux");
    require_kvm();
    let dir = scratch("nocap");
    let config = dir.join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "[fleet]\nnetwork = {{ bridge = \"tdfz0\", subnet = \"10.94.253.0/24\" }}\n\
             [[vm]]\nname = \"web\"\nimage = \"{httpd}\"\n",
            httpd = image_path("httpd").display(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin"])
        .arg(tandem_tests::tandem_bin())
        .args(["fleet", config.to_str().unwrap(), "--stop-when-ready"])
        .output()
        .expect("run tandem fleet under setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(tandem::exit_code::VMM_ERROR)),
        "{stderr}"
    );
    assert!(
        stderr.contains("the fleet's bridge tdfz0 does not exist, and tandem lacks CAP_NET_ADMIN")
            && stderr.contains("`ip link add tdfz0 type bridge`")
            && stderr.contains("`ip addr add 10.94.253.1/24 dev tdfz0`"),
        "{stderr}"
    );
    assert!(!interface_exists("tdfz0"));
}
