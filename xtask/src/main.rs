//! `cargo xtask`: build, run, test and benchmark Tandem.
//!
//! The guest is a cargo workspace of its own (built for `x86_64-unknown-none`),
//! so the commands here tie the two builds together. Cargo is always called
//! through `$CARGO`, the one that runs this program.

mod bench;
mod bench_api;
mod bench_args;
mod bench_backup;
mod bench_backup_disk;
mod bench_containerd;
mod bench_disk;
mod bench_fleet;
mod bench_fleet_daemon;
mod bench_fleet_io;
mod bench_floor;
mod bench_net;
mod bench_net_http;
mod bench_paths;
mod bench_snapshot;
mod dist;
mod elf;
mod fuzz;
mod gdb;
mod guest;
mod host;
mod oci;
mod project;
mod qemu;
mod stats;
mod table;
mod test_cmd;
mod test_report;
mod toolchain;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use project::{Profile, Project};

const HELP: &str = "\
cargo xtask: build, run, test and benchmark Tandem

USAGE:
    cargo xtask <COMMAND> [OPTIONS]

COMMANDS:
    build [--debug]
        Build every guest app (release, x86_64-unknown-none) and the host
        (`tandem` binary and examples; release unless --debug). Every command
        that builds the guest first adds x86_64-unknown-none to the toolchain
        of rust-toolchain.toml with rustup when it lacks it.

    run [APP] [--qemu | --grub] [--accel kvm|tcg] [--machine microvm|q35] [--port P] [--net SPEC] [-- ARGS...]
        Build guest and host (release), then boot APP (default: hello) with
        `tandem run`; ARGS become the guest's command line. Exits with the
        guest's exit code.
        --qemu boots the same image under QEMU instead (PVH, `-kernel`;
        machine microvm unless --machine q35); --grub builds a GRUB ISO and
        boots it on q35 with SeaBIOS (Multiboot2). Both default to TCG, the
        faster accelerator on these machines; --accel kvm overrides.
        Missing Debian packages (qemu-system-x86; grub-common, grub-pc-bin,
        xorriso, mtools) are installed with apt-get when run as root.
        The network apps (httpd: TCP 80; echo: TCP and UDP 7) get, under
        --qemu, a virtio-net device on QEMU's user network (DHCP, no root)
        with host port P of 127.0.0.1 (default 8080) forwarded to theirs:
        `cargo xtask run --qemu httpd`, then `curl localhost:8080`.
        On the Tandem VMM they take --net SPEC, passed to `tandem run --net`
        (as root a missing tap is made and removed at exit):
        `cargo xtask run httpd --net tap=tdm0,ip=10.99.1.2/24,gw=10.99.1.1`,
        then `curl 10.99.1.2`.

    gdb APP [-- ARGS...]
        Build guest and host (release), boot APP with `tandem run --gdb`
        (a Unix socket in the temporary folder; ARGS become the guest's
        command line) and start gdb on APP's image, connected, with the
        guest stopped before its first instruction. Installs Debian's gdb
        when missing (as root). Exits with tandem's exit code.

    iso APP [--out FILE] [-- ARGS...]
        Build a bootable ISO of APP (GRUB, BIOS, Multiboot2; console on COM1)
        at target/iso/APP.iso, for QEMU or a USB stick on a bare-metal PC.

    oci APP [--out FILE] [--name REF]
        Build an OCI image of APP (`FROM scratch` plus the ELF as /APP, its
        entrypoint) as an OCI image-layout tarball, by default
        target/oci/APP.tar named docker.io/tandem/APP:latest, for
        `ctr images import` and the containerd shim (containerd-shim-tandem-v1).

    dist [--debug] [--out DIR]
        Build the host (release unless --debug) and write the man pages and
        shell completions (bash, zsh, fish) of `tandem`, generated from its
        clap definition (clap_mangen, clap_complete), into DIR (default
        target/dist): man/*.1, completions/{bash,zsh,fish}/.

    deb [--out DIR]
        Build the Debian package of `tandem` with cargo-deb (installed with
        `cargo install cargo-deb --locked` when missing): release builds of
        tandem, tandemd and the containerd shim, tandem's man pages and
        completions (dist), the tandemd unit and the `tandem` group
        (sysusers.d), as
        described by [package.metadata.deb] in host/Cargo.toml. The package
        goes to DIR (default target/debian); `dpkg -i` it.

    test [-- TEST-ARGS...]
        Check the toolchain and /dev/kvm; lint both workspaces (cargo fmt
        --check, cargo clippy -D warnings); build the guest apps, the `tandem`
        binary, the containerd shim and the OCI images of the test apps
        (target/oci); then run `cargo test --workspace --no-fail-fast` with
        TANDEM_GUEST_DIR, TANDEM_BIN, TANDEM_SHIM and TANDEM_OCI_DIR set.
        Every step runs even when one fails; a summary names each failed step
        and test and ends with `N passed, M failed`. Missing Debian packages
        (QEMU, GRUB tools, gdb, containerd, runc) are installed with apt-get as
        root. TEST-ARGS go to the test harness (for example a name filter).

    bench [--runs N] [--warmup N] [--json FILE]
        Boot-time figures for the hello app: in process (examples/bench) and
        as whole processes, interleaved with a baseline process that only
        creates a VM and runs one instruction. N defaults to 200 runs and 3
        warm-up runs. Writes JSON to target/bench/boot.json unless --json.

    bench boot-paths [--runs N] [--slow-runs N] [--json FILE] [--svg FILE]
        Boots hello N times (default 10; paths slower than 1 s per run: at
        most --slow-runs, default 3) on every path: Tandem PV, QEMU microvm +
        PVH, QEMU q35 + SeaBIOS + PVH, QEMU q35 + SeaBIOS + GRUB + Multiboot2,
        under KVM and TCG. Prints medians per phase and writes JSON and an SVG
        chart (target/bench/boot-paths.{json,svg}).

    bench fleet [--sizes 100,1000] [--runs N] [--json FILE] [--no-io] [--io-only]
                [--vms-per-worker 64,128] [--no-daemon]
        Fleets of small VMs (service app, one in ten high priority) booted
        until all are ready, with the scheduler (cap = CPUs) and all at once,
        side by side: time to all ready, VMs/s, p50/p99 per priority class,
        host memory per VM; the same fleets through a release tandemd (VMs
        in worker processes of --vms-per-worker each), all started at once,
        next to the one-process figures with the load average; then the I/O case: 4 batch VMs writing flat out
        while 20 high-priority VMs boot, with and without [fleet] io_budget
        (high p50/p99 time to ready, batch MiB/s) (target/bench/fleet.json).

    bench snapshot [--runs N] [--json FILE]
        Snapshot, restore, clone and backup costs of the counter app next to
        its cold boot, in process and as whole processes (64 MiB and 1 GiB).
        Writes JSON to target/bench/snapshot.json unless --json.

    bench api [--runs N] [--vms-per-worker N] [--json FILE]
        tandemd (release) on a private socket: N VMs (service, default 100)
        created and started through the API, p50/p99 latency of create,
        start and list, and resident memory per idle VM in the workers
        (target/bench/api.json).

    bench containerd [--runs N] [--json FILE]
        `ctr run --rm` of hello under the Tandem shim against runc running a
        static hello binary, interleaved, on a private containerd (root;
        containerd and runc installed if missing). N defaults to 30.
        Writes JSON to target/bench/containerd.json unless --json.

    bench disk [--runs N] [--json FILE]
        diskbench on a virtio-blk disk (a sparse file) under the Tandem VMM
        against the same calls on a host file, interleaved: 64 MiB written
        and read in 1 MiB calls, 2000 random 4 KiB writes and reads, writes
        ending with fdatasync. Medians (N rounds, default 5) of MiB/s and
        requests/s and their ratio (target/bench/disk.json).

    bench backup [--runs N] [--json FILE]
        Backup points of kvstore on a disk against the blocks dirtied since
        the previous point (16 to 4096 puts of one 4 KiB block each): the
        point's dirty blocks and pages, write time (median, max) and bytes
        (N rounds, default 3; target/bench/backup-disk.json).
        Then the pause figures of `bench backup-pause` (default options).

    bench backup-pause [--runs N] [--backup-mode precopy|stop|both] [--json FILE]
        Guest pause per backup point (host side: vCPU stopped to resumed;
        guest side: the gap in its own TSC-stamped loop), p50 and p99, at
        16, 1024 and 16,384 dirtied pages of a 256 MiB guest (dirtier),
        pre-copy and stop-the-world side by side (N runs each, default 3,
        interleaved); pages per point, write MiB/s (target/bench/backup.json).

    bench net [--runs N] [--requests N] [--json FILE]
        httpd on the Tandem VMM (a tap the bench makes; root) and under QEMU
        microvm + KVM (user networking): spawn to the first HTTP 200 (N runs,
        default 10, interleaved), then requests/s and p50/p99 latency of
        GET / over one kept-alive connection (default 2000 requests) next to
        the same response from a host thread, and the VMM's exits per
        request. Writes JSON to target/bench/net.json unless --json.

    codegen [--check]
        Regenerate the checked-in generated code from its sources, without
        protoc (tools/codegen: protox and tonic-prost-build):
        tests/src/cri_v1.rs from tests/proto/runtime/v1/api.proto. --check
        regenerates into a temporary folder and fails if a checked-in file
        differs (tests/codegen.rs runs it too).

    fuzz TARGET [--time SECONDS]
        Run one cargo-fuzz target (nightly; installs cargo-fuzz if missing)
        for SECONDS (default 60) from fresh seeds; prints executions and
        saves crashing inputs to fuzz/regressions/TARGET/. `fuzz --list`
        names the targets.

    help
        Show this text.
";

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<ExitCode> {
    let mut args = std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect::<Result<Vec<String>, _>>()
        .map_err(|bad| anyhow::anyhow!("argument is not valid UTF-8: {bad:?}"))?
        .into_iter();
    let Some(command) = args.next() else {
        print!("{HELP}");
        return Ok(ExitCode::SUCCESS);
    };
    let args: Vec<String> = args.collect();
    if args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-h" || a == "--help")
    {
        print!("{HELP}");
        return Ok(ExitCode::SUCCESS);
    }
    let project = Project::locate()?;
    match command.as_str() {
        "build" => build(&project, args),
        "run" => run(&project, args),
        "gdb" => gdb_cmd(&project, args),
        "iso" => iso(&project, args),
        "oci" => oci_cmd(&project, args),
        "test" => test(&project, args),
        "bench" => bench_cmd(&project, args),
        "fuzz" => fuzz_cmd(&project, args),
        "codegen" => codegen(&project, args),
        "dist" => dist_cmd(&project, args, false),
        "deb" => dist_cmd(&project, args, true),
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}` (see `cargo xtask help`)"),
    }
}

/// Command-line words of one command: flags and positionals before `--`,
/// and everything after it.
struct Args {
    words: std::vec::IntoIter<String>,
    trailing: Vec<String>,
}

impl Args {
    fn new(mut all: Vec<String>) -> Self {
        let trailing = match all.iter().position(|a| a == "--") {
            Some(at) => {
                let rest = all.split_off(at + 1);
                all.pop();
                rest
            }
            None => Vec::new(),
        };
        Args {
            words: all.into_iter(),
            trailing,
        }
    }

    fn next(&mut self) -> Option<String> {
        self.words.next()
    }

    /// The value of `--name VALUE` or `--name=VALUE` when `word` is that flag.
    fn value(&mut self, word: &str, name: &str) -> Result<Option<String>> {
        if word == name {
            return self
                .words
                .next()
                .map(Some)
                .with_context(|| format!("{name} needs a value"));
        }
        Ok(word
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_owned))
    }
}

fn gdb_cmd(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut app = None;
    while let Some(word) = args.next() {
        if word.starts_with('-') || app.is_some() {
            return Err(unexpected("gdb", &word));
        }
        app = Some(word);
    }
    let app = app.context("`cargo xtask gdb` needs an APP (e.g. debugme)")?;
    gdb::gdb(project, &app, &args.trailing.join(" "))
}

/// `cargo xtask dist` and `cargo xtask deb`.
fn dist_cmd(project: &Project, args: Vec<String>, deb: bool) -> Result<ExitCode> {
    let name = if deb { "deb" } else { "dist" };
    let mut args = Args::new(args);
    let mut profile = Profile::Release;
    let mut out = None;
    while let Some(word) = args.next() {
        if let Some(v) = args.value(&word, "--out")? {
            out = Some(PathBuf::from(v));
        } else if word == "--debug" && !deb {
            profile = Profile::Debug;
        } else {
            return Err(unexpected(name, &word));
        }
    }
    if let Some(word) = args.trailing.first() {
        return Err(unexpected(name, word));
    }
    if deb {
        dist::deb(project, out)?;
    } else {
        dist::dist(project, profile, out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn unexpected(command: &str, word: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "unexpected argument `{word}` for `cargo xtask {command}` (see `cargo xtask help`)"
    )
}

fn build(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut profile = Profile::Release;
    while let Some(word) = args.next() {
        match word.as_str() {
            "--debug" => profile = Profile::Debug,
            _ => return Err(unexpected("build", &word)),
        }
    }
    if let Some(word) = args.trailing.first() {
        return Err(unexpected("build", word));
    }
    guest::build(project)?;
    host::build(project, profile, true)?;
    println!();
    guest::print_images(project)?;
    println!("host VMM: {}", project.show(&project.host_bin(profile)));
    Ok(ExitCode::SUCCESS)
}

#[derive(PartialEq)]
enum RunOn {
    Tandem,
    Qemu,
    Grub,
}

fn run(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut app = None;
    let mut on = RunOn::Tandem;
    let mut accel = qemu::Accel::Tcg;
    let mut machine = None;
    let mut port = None;
    let mut net = None;
    while let Some(word) = args.next() {
        if let Some(v) = args.value(&word, "--net")? {
            net = Some(v);
        } else if let Some(v) = args.value(&word, "--port")? {
            let p: u16 =
                v.parse().ok().filter(|&p| p != 0).with_context(|| {
                    format!("--port {v}: expected a port number from 1 to 65535")
                })?;
            port = Some(p);
        } else if word == "--qemu" {
            on = RunOn::Qemu;
        } else if word == "--grub" {
            on = RunOn::Grub;
        } else if let Some(v) = args.value(&word, "--accel")? {
            accel = qemu::Accel::parse(&v)?;
        } else if let Some(v) = args.value(&word, "--machine")? {
            machine = Some(qemu::Machine::parse(&v)?);
        } else if word.starts_with('-') || app.is_some() {
            return Err(unexpected("run", &word));
        } else {
            app = Some(word);
        }
    }
    let app = app.unwrap_or_else(|| "hello".to_owned());
    let cmdline = args.trailing.join(" ");
    let host_port = port.unwrap_or(qemu::DEFAULT_HOST_PORT);
    let forwards = qemu::app_forwards(&app, host_port);
    if port.is_some() && (forwards.is_none() || on != RunOn::Qemu) {
        let apps: Vec<&str> = qemu::NET_APPS.iter().map(|(name, _)| *name).collect();
        bail!(
            "--port is for the network apps ({}) under --qemu (on the Tandem VMM, give them a tap: `--net tap=NAME,ip=A/P,gw=G`, see the README)",
            apps.join(", ")
        );
    }
    if net.is_some() && on != RunOn::Tandem {
        bail!("--net is for the Tandem VMM (a tap); --qemu gives the network apps QEMU's user network (with --port)");
    }
    if on == RunOn::Tandem {
        project::require_kvm()?;
    } else {
        qemu::ensure_tools(qemu::QEMU_TOOLS)?;
        if accel == qemu::Accel::Kvm {
            project::require_kvm()?;
        }
    }
    guest::build(project)?;
    let image = guest::image(project, &app)?;

    let mut cmd = match on {
        RunOn::Tandem => {
            host::build(project, Profile::Release, false)?;
            let mut cmd = Command::new(project.host_bin(Profile::Release));
            cmd.arg("run").arg(&image);
            if !cmdline.is_empty() {
                cmd.arg("--cmdline").arg(&cmdline);
            }
            if let Some(net) = &net {
                cmd.arg("--net").arg(net);
            }
            cmd
        }
        RunOn::Qemu => {
            let machine = machine.unwrap_or(qemu::Machine::Microvm);
            if forwards.is_some() && machine != qemu::Machine::Microvm {
                bail!(
                    "{app} needs a virtio-mmio network device: use --machine microvm (the default)"
                );
            }
            if let Some(forwards) = &forwards {
                for f in forwards {
                    let proto = match f.proto {
                        qemu::Proto::Tcp => "tcp",
                        qemu::Proto::Udp => "udp",
                    };
                    eprintln!(
                        "xtask: {proto} 127.0.0.1:{} -> guest port {}",
                        f.host, f.guest
                    );
                }
                if app == "httpd" {
                    eprintln!("xtask: {app} will answer at http://localhost:{host_port}/ once it prints its address");
                }
            }
            qemu::command_with_net(
                machine,
                accel,
                &qemu::Boot::Pvh {
                    image: &image,
                    cmdline: &cmdline,
                },
                forwards.as_deref(),
            )
        }
        RunOn::Grub => {
            if machine == Some(qemu::Machine::Microvm) {
                bail!("GRUB needs firmware: use --machine q35 (the default for --grub)");
            }
            let iso = qemu::make_iso(project, &app, &image, &cmdline, None)?;
            qemu::command(qemu::Machine::Q35, accel, &qemu::Boot::Iso(&iso))
        }
    };
    project::echo(&cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if on == RunOn::Tandem {
        if !status.success() {
            eprintln!("tandem: {app} ended with {}", project::describe(status));
        }
        return Ok(ExitCode::from(project::shell_code(status)));
    }
    // QEMU exits with (code << 1) | 1 through isa-debug-exit.
    match status.code().and_then(qemu::guest_code) {
        Some(code) => {
            if code != 0 {
                eprintln!("xtask: {app} exited with code {code}");
            }
            Ok(ExitCode::from(code))
        }
        None => {
            eprintln!(
                "xtask: QEMU ended with {} without the guest's exit code",
                project::describe(status)
            );
            Ok(ExitCode::from(tandem_abi::exit::VMM_ERROR))
        }
    }
}

fn codegen(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut check = false;
    while let Some(word) = args.next() {
        match word.as_str() {
            "--check" => check = true,
            _ => return Err(unexpected("codegen", &word)),
        }
    }
    if let Some(word) = args.trailing.first() {
        return Err(unexpected("codegen", word));
    }
    let mut cmd = project.codegen(if check { &["--check"] } else { &[] });
    project::run(&mut cmd, "codegen")?;
    Ok(ExitCode::SUCCESS)
}

fn iso(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut app = None;
    let mut out = None;
    while let Some(word) = args.next() {
        if let Some(v) = args.value(&word, "--out")? {
            out = Some(PathBuf::from(v));
        } else if word.starts_with('-') || app.is_some() {
            return Err(unexpected("iso", &word));
        } else {
            app = Some(word);
        }
    }
    let app = app.context("usage: cargo xtask iso APP [--out FILE] [-- ARGS...]")?;
    guest::build(project)?;
    let image = guest::image(project, &app)?;
    let iso = qemu::make_iso(project, &app, &image, &args.trailing.join(" "), out)?;
    println!("{}", project.show(&iso));
    println!(
        "boot it: qemu-system-x86_64 -machine q35 -m 128M -nographic -serial stdio -cdrom {}",
        project.show(&iso)
    );
    println!("or write it to a USB stick (all data on it is lost): sudo dd if={} of=/dev/sdX bs=4M conv=fsync", project.show(&iso));
    Ok(ExitCode::SUCCESS)
}

fn oci_cmd(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let (mut app, mut out, mut name) = (None, None, None);
    while let Some(word) = args.next() {
        if let Some(v) = args.value(&word, "--out")? {
            out = Some(PathBuf::from(v));
        } else if let Some(v) = args.value(&word, "--name")? {
            name = Some(v);
        } else if word.starts_with('-') || app.is_some() {
            return Err(unexpected("oci", &word));
        } else {
            app = Some(word);
        }
    }
    let app = app.context("usage: cargo xtask oci APP [--out FILE] [--name REF]")?;
    guest::build(project)?;
    let image = guest::image(project, &app)?;
    let name = name.unwrap_or_else(|| oci::default_name(&app));
    let out = out.unwrap_or_else(|| oci::default_out(project, &app));
    let digest = oci::app_image(&image, &app, &name, &out)?;
    println!("{} ({name}, {digest})", project.show(&out));
    println!("import it: ctr images import {}", project.show(&out));
    println!("run it:    ctr run --rm --runtime io.containerd.tandem.v1 {name} {app}-1");
    Ok(ExitCode::SUCCESS)
}

fn test(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    if let Some(word) = args.next() {
        return Err(unexpected("test", &word));
    }
    test_cmd::test(project, &args.trailing)
}

fn bench_paths_cmd(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut opts = bench_paths::Options::default();
    while let Some(word) = args.next() {
        if let Some(v) = args.value(&word, "--runs")? {
            opts.runs = parse_count("--runs", &v)?.max(1);
        } else if let Some(v) = args.value(&word, "--slow-runs")? {
            opts.slow_runs = parse_count("--slow-runs", &v)?.max(1);
        } else if let Some(v) = args.value(&word, "--json")? {
            opts.json = Some(v.into());
        } else if let Some(v) = args.value(&word, "--svg")? {
            opts.svg = Some(v.into());
        } else {
            return Err(unexpected("bench boot-paths", &word));
        }
    }
    bench_paths::bench(project, &opts)?;
    Ok(ExitCode::SUCCESS)
}

fn bench_cmd(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    if args.first().map(String::as_str) == Some("boot-paths") {
        return bench_paths_cmd(project, args[1..].to_vec());
    }
    if args.first().map(String::as_str) == Some("fleet") {
        bench_fleet::bench(project, &bench_fleet::parse(&args[1..])?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.first().map(String::as_str) == Some("api") {
        bench_api::bench(project, &bench_api::parse(&args[1..])?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.first().map(String::as_str) == Some("containerd") {
        bench_containerd::bench(project, &bench_containerd::parse(&args[1..])?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.first().map(String::as_str) == Some("backup") {
        bench_backup_disk::bench(project, &bench_backup_disk::parse(&args[1..])?)?;
        bench_backup::bench(project, &bench_backup::parse(&[])?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.first().map(String::as_str) == Some("backup-pause") {
        bench_backup::bench(project, &bench_backup::parse(&args[1..])?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.first().map(String::as_str) == Some("disk") {
        bench_disk::bench(project, &bench_disk::parse(&args[1..])?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.first().map(String::as_str) == Some("net") {
        bench_net::bench(project, &bench_net::parse(&args[1..])?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.first().map(String::as_str) == Some("snapshot") {
        bench_snapshot::bench(project, &bench_snapshot::parse(&args[1..])?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut args = Args::new(args);
    let mut opts = bench::Options::default();
    while let Some(word) = args.next() {
        if let Some(v) = args.value(&word, "--runs")? {
            opts.runs = parse_count("--runs", &v)?;
        } else if let Some(v) = args.value(&word, "--warmup")? {
            opts.warmup = parse_count("--warmup", &v)?;
        } else if let Some(v) = args.value(&word, "--json")? {
            opts.json = Some(v.into());
        } else {
            return Err(unexpected("bench", &word));
        }
    }
    if let Some(word) = args.trailing.first() {
        return Err(unexpected("bench", word));
    }
    bench::bench(project, &opts)?;
    Ok(ExitCode::SUCCESS)
}

fn fuzz_cmd(project: &Project, args: Vec<String>) -> Result<ExitCode> {
    let mut args = Args::new(args);
    let mut target = None;
    let mut seconds = 60u64;
    while let Some(word) = args.next() {
        if word == "--list" {
            println!("{}", fuzz::targets(project)?.join("\n"));
            return Ok(ExitCode::SUCCESS);
        } else if let Some(v) = args.value(&word, "--time")? {
            seconds = v
                .parse()
                .with_context(|| format!("--time takes whole seconds, not `{v}`"))?;
        } else if word.starts_with('-') || target.is_some() {
            return Err(unexpected("fuzz", &word));
        } else {
            target = Some(word);
        }
    }
    let target = target.context("usage: cargo xtask fuzz TARGET [--time SECONDS] (see --list)")?;
    fuzz::fuzz(project, &target, seconds)?;
    Ok(ExitCode::SUCCESS)
}

fn parse_count(flag: &str, value: &str) -> Result<usize> {
    value
        .parse()
        .with_context(|| format!("{flag} takes a whole number, not `{value}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn splits_at_double_dash() {
        let mut a = Args::new(words("hello -- a -- b"));
        assert_eq!(a.next().as_deref(), Some("hello"));
        assert_eq!(a.next(), None);
        assert_eq!(a.trailing, words("a -- b"));
    }

    #[test]
    fn flag_values() {
        let mut a = Args::new(words("--runs 5 --json=x.json --runs"));
        let w = a.next().unwrap_or_default();
        assert_eq!(a.value(&w, "--runs").unwrap().as_deref(), Some("5"));
        let w = a.next().unwrap_or_default();
        assert_eq!(a.value(&w, "--runs").unwrap(), None);
        assert_eq!(a.value(&w, "--json").unwrap().as_deref(), Some("x.json"));
        let w = a.next().unwrap_or_default();
        assert!(a.value(&w, "--runs").is_err());
    }
}
