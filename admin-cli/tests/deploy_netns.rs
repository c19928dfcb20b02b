//! The three-municipality example of `deploy/` (deploy/federation/*/node.toml,
//! the configs `deploy/compose.yaml` runs) run for real: three
//! `samvirke-node` processes in three network namespaces, each with its own
//! 10.77.0.x address on a veth link to a bridge in a fourth namespace, and
//! the service names of the compose file (`aarhus`, `vejle`, `silkeborg`)
//! resolving to those addresses through `/etc/netns/NAME/hosts`. The PKI,
//! identities, a roster and an agreement are made and signed with the
//! `samvirke` CLI as the README tells an operator; then Vejle probes its
//! partners and asks Aarhus for its catalog across the links.
//!
//! Needs root and iproute2 (`.ci/run` installs it). Elsewhere it fails
//! saying so, unless SAMVIRKE_SKIP_NETNS is set. Namespaces, host files
//! and processes are removed by a guard, also when the test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_samvirke");
/// The local API of every example config, inside its namespace.
const LOCAL: &str = "http://127.0.0.1:7080";
/// How long a node may take to start serving.
const READY: Duration = Duration::from_secs(30);

/// (service name, municipality code, municipality name, address).
const TOWNS: [(&str, u32, &str, &str); 3] = [
    ("aarhus", 751, "Aarhus Kommune", "10.77.0.1"),
    ("vejle", 630, "Vejle Kommune", "10.77.0.2"),
    ("silkeborg", 740, "Silkeborg Kommune", "10.77.0.3"),
];

/// The `samvirke-node` binary next to this package's `samvirke`.
fn node_binary() -> PathBuf {
    samvirke_tests::workspace_binary(Path::new(CLI), "samvirke-node")
}

/// Whether this process may create network namespaces; the reason if not.
fn netns_unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!("it needs root (effective uid {euid})"));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("it needs `ip` from iproute2 (apt-get install -y iproute2)".to_string()),
    }
}

fn run(command: &mut Command) -> Output {
    // Program and arguments only: the environment holds a token.
    let shown = format!(
        "{} {:?}",
        command.get_program().to_string_lossy(),
        command.get_args().collect::<Vec<_>>()
    );
    let out = command.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn cli(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(Command::new(CLI).args(args)).stdout).into_owned()
}

/// The namespaces, host files and node processes of one test run; all
/// removed on drop, whatever happened.
struct Federation {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Federation {
    fn ns(&self, town: &str) -> String {
        format!("{}-{town}", self.prefix)
    }

    /// `samvirke ARGS` inside the namespace of `town`, with `token`.
    fn cli_in(&self, town: &str, token: &str, args: &[&str]) -> String {
        let out = run(Command::new("ip")
            .args(["netns", "exec", &self.ns(town), CLI])
            .args(args)
            .env("SAMVIRKE_TOKEN", token));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
    }
}

/// The line of `output` after the one containing `marker`, trimmed.
fn line_after(output: &str, marker: &str) -> String {
    let mut lines = output.lines();
    lines
        .by_ref()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no `{marker}` in:\n{output}"));
    lines.next().unwrap_or_default().trim().to_string()
}

/// Starts the node of `dir` in namespace `ns`; returns once it serves.
fn start_node(node: &Path, ns: &str, dir: &Path) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(node)
        .arg("--config")
        .arg(dir.join("node.toml"))
        .args(["--log-format", "text"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn samvirke-node");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the node never
                // blocks on a full pipe.
                continue;
            }
        }
    });
    let deadline = Instant::now() + READY;
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("samvirke node serving") => return child,
            Ok(line) => seen.push(line),
            Err(e) => panic!("the node in {ns} did not start serving ({e:?}):\n{seen:#?}"),
        }
    }
}

#[test]
fn the_deploy_example_federation_runs_in_three_network_namespaces() {
    if let Some(reason) = netns_unavailable() {
        if std::env::var_os("SAMVIRKE_SKIP_NETNS").is_some() {
            eprintln!("SKIPPED: the network-namespace deployment test: {reason}");
            return;
        }
        panic!(
            "the network-namespace deployment test cannot run: {reason}; set \
             SAMVIRKE_SKIP_NETNS=1 to skip it"
        );
    }
    let node = node_binary();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let work = tempfile::tempdir().expect("tempdir");
    let mut fed = Federation {
        prefix: format!("svk{}", std::process::id()),
        namespaces: Vec::new(),
        children: Vec::new(),
    };

    // The network: a bridge in a namespace of its own, one veth link to
    // each node's namespace. Nothing is created in the host's namespace.
    let lan = format!("{}-lan", fed.prefix);
    ip(&["netns", "add", &lan]);
    fed.namespaces.push(lan.clone());
    ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &lan, "link", "set", "br0", "up"]);
    let hosts: String = TOWNS
        .iter()
        .map(|(name, _, _, address)| format!("{address} {name}\n"))
        .collect();
    for (name, _, _, address) in TOWNS {
        let ns = fed.ns(name);
        ip(&["netns", "add", &ns]);
        fed.namespaces.push(ns.clone());
        let port = format!("p-{name}");
        ip(&[
            "-n", &lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let etc = Path::new("/etc/netns").join(&ns);
        std::fs::create_dir_all(&etc).expect("/etc/netns/NAME");
        std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n{hosts}")).expect("hosts");
    }

    // PKI and identities, as the README's "Run a node for your
    // municipality" does it with the development CA.
    let ca = work.path().join("ca");
    cli(&["pki", "ca", "--out", ca.to_str().expect("utf8")]);
    let mut tokens = Vec::new();
    let mut dirs = Vec::new();
    for (name, _, town, _) in TOWNS {
        let dir = work.path().join(name);
        for sub in ["keys", "tls"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        std::fs::copy(
            deploy.join("federation").join(name).join("node.toml"),
            dir.join("node.toml"),
        )
        .expect("copy the example config");
        let d = dir.to_str().expect("utf8");
        cli(&["key", "new", "--out", &format!("{d}/keys/signing.pem")]);
        cli(&[
            "pki",
            "issue",
            "--ca",
            ca.to_str().expect("utf8"),
            "--name",
            town,
            "--host",
            name,
            "--node-dir",
            d,
        ]);
        let made = cli(&["token", "new", "--name", "admin", "--role", "admin"]);
        let token = line_after(&made, "Token (");
        let entry = &made[made.find("[[local.tokens]]").expect("an entry")..];
        let mut config = std::fs::read_to_string(dir.join("node.toml")).expect("config");
        config.push('\n');
        config.push_str(entry);
        std::fs::write(dir.join("node.toml"), config).expect("config");
        tokens.push(token);
        dirs.push(dir);
    }
    for ((name, ..), dir) in TOWNS.iter().zip(&dirs) {
        let ns = fed.ns(name);
        let child = start_node(&node, &ns, dir);
        fed.children.push(child);
    }

    // The fellowship: a roster of the three, signed by the secretariat and
    // pinned at every node.
    let secretariat = work.path().join("secretariat.pem");
    let made = cli(&["key", "new", "--out", secretariat.to_str().expect("utf8")]);
    let secretariat_key = made
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("the public key")
        .to_string();
    let roster = work.path().join("roster.toml");
    let roster_arg = roster.to_str().expect("utf8");
    cli(&[
        "roster",
        "new",
        "--fellowship",
        "midtjylland",
        "--name",
        "Midtjylland",
        "--secretariat-key",
        &secretariat_key,
        "--out",
        roster_arg,
    ]);
    for ((name, ..), dir) in TOWNS.iter().zip(&dirs) {
        let card = work.path().join(format!("{name}.id"));
        let shown = cli(&[
            "identity",
            "show",
            "--config",
            dir.join("node.toml").to_str().expect("utf8"),
        ]);
        std::fs::write(&card, shown).expect("identity card");
        cli(&[
            "roster",
            "add-member",
            roster_arg,
            "--identity",
            card.to_str().expect("utf8"),
            "--joined",
            "2024-01-01",
        ]);
    }
    cli(&[
        "roster",
        "sign",
        "--yes",
        roster_arg,
        "--key",
        secretariat.to_str().expect("utf8"),
    ]);
    for ((name, ..), token) in TOWNS.iter().zip(&tokens) {
        fed.cli_in(
            name,
            token,
            &[
                "push",
                roster_arg,
                "--node",
                LOCAL,
                "--trust-anchor",
                "--yes",
            ],
        );
    }

    // Aarhus publishes a dataset and shares its catalog entry and readings
    // with Vejle: an agreement drafted, signed by both, pushed to both.
    fed.cli_in(
        "aarhus",
        &tokens[0],
        &[
            "dataset",
            "publish",
            "--sensor-kind",
            "air-quality",
            "--code",
            "751",
        ],
    );
    let today = time::OffsetDateTime::now_utc().date();
    let from = (today - time::Duration::days(30)).to_string();
    let until = (today + time::Duration::days(365)).to_string();
    let agreement = work.path().join("agreement.toml");
    let agreement_arg = agreement.to_str().expect("utf8");
    cli(&[
        "agreement",
        "draft",
        "--fellowship",
        "midtjylland",
        "--provider",
        "751",
        "--consumer",
        "630",
        "--dataset",
        "aarhus-air-quality",
        "--operation",
        "catalog",
        "--operation",
        "read",
        "--purpose",
        "Joint clean-air pilot",
        "--legal-basis-code",
        "GDPR art. 6(1)(e)",
        "--legal-basis-text",
        "Task in the public interest",
        "--valid-from",
        &from,
        "--valid-until",
        &until,
        "--roster",
        roster_arg,
        "--out",
        agreement_arg,
    ]);
    for dir in [&dirs[0], &dirs[1]] {
        cli(&[
            "agreement",
            "sign",
            "--yes",
            agreement_arg,
            "--key",
            dir.join("keys/signing.pem").to_str().expect("utf8"),
        ]);
    }
    for (town, token) in [("aarhus", &tokens[0]), ("vejle", &tokens[1])] {
        fed.cli_in(town, token, &["push", agreement_arg, "--node", LOCAL]);
    }

    // Vejle reaches its partners across the veth links, by their names.
    let probed = fed.cli_in(
        "vejle",
        &tokens[1],
        &["partners", "--probe", "--format", "json"],
    );
    let partners: Vec<serde_json::Value> = probed
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    for code in [751, 740] {
        let partner = partners
            .iter()
            .find(|p| p["municipality"] == code)
            .unwrap_or_else(|| panic!("{code} is a partner of Vejle: {probed}"));
        assert_eq!(partner["reachable"], "ok", "{code} answers Vejle: {probed}");
        assert!(
            partner["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with("https://")),
            "{probed}"
        );
    }
    let aarhus = partners.iter().find(|p| p["municipality"] == 751);
    assert_eq!(
        aarhus.map(|p| p["agreements_as_consumer"].clone()),
        Some(serde_json::json!(1)),
        "Vejle consumes under the agreement: {probed}"
    );
    // And asks Aarhus for what the agreement lets it see.
    let catalog = fed.cli_in("vejle", &tokens[1], &["catalog", "--format", "json"]);
    assert!(
        catalog.contains("aarhus-air-quality"),
        "Vejle sees Aarhus' dataset through the agreement: {catalog}"
    );
    // Silkeborg, in the fellowship but party to no agreement, does not.
    let catalog = fed.cli_in("silkeborg", &tokens[2], &["catalog", "--format", "json"]);
    assert!(!catalog.contains("aarhus-air-quality"), "{catalog}");
}
