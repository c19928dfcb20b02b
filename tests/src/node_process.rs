//! Nodes in processes of their own, for tests that kill, stop or duplicate
//! a node: the test binary runs itself again with `--ignored --exact
//! child_node_process`, and that (ignored) test calls [`serve_child_node`],
//! which opens the node named by [`CHILD_CONFIG`], serves, and prints its
//! addresses on a line starting with [`CHILD_READY`]. Every test file that
//! starts node processes has such an ignored test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use samvirke_node::config::Config;
use samvirke_node::devnet::{DEV_SYNC_INTERVAL_SECS, DevStore};
use samvirke_node::identity::NodeIdentity;
use samvirke_node::pki::{DevCa, loopback_hosts};
use samvirke_node::provision::{NodeSpec, init_node_dir, install_dev_certificate};
use samvirke_node::server::{Listeners, Node};

use crate::LocalApi;

/// The child process's node config (its presence makes
/// [`serve_child_node`] serve).
pub const CHILD_CONFIG: &str = "SAMVIRKE_TEST_CHILD_NODE_CONFIG";
/// The line the child prints once its listeners are bound and it serves.
pub const CHILD_READY: &str = "child node serving";

/// The body of a test binary's `child_node_process` test: opens the node
/// whose config [`CHILD_CONFIG`] names, binds, serves, prints its
/// addresses, and serves until killed or until its parent goes away (its
/// stdin closes). Returns at once when the variable is not set (the test
/// run as a test).
pub fn serve_child_node() {
    let Some(config) = std::env::var_os(CHILD_CONFIG) else {
        return;
    };
    let config = Config::load(Path::new(&config)).expect("the child node's config loads");
    std::thread::spawn(|| {
        let mut parent = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut parent);
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new().expect("the child node's runtime");
    runtime.block_on(async move {
        let node = Node::open(config).expect("open the child node");
        let listeners = Listeners::bind(node.config())
            .await
            .expect("bind the child node's listeners");
        let running = node.spawn(listeners);
        println!(
            "{CHILD_READY} peer={} local={}",
            running.peer_addr, running.local_addr
        );
        std::future::pending::<()>().await;
    });
}

/// A node in its own process, killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    pub identity: NodeIdentity,
    pub peer: SocketAddr,
    pub api: LocalApi,
}

impl NodeProcess {
    /// Provisions a node for `code` in `dir` with a certificate from `ca`
    /// and starts it as a child process; returns once it serves.
    pub async fn start(dir: &Path, ca: &DevCa, code: u32) -> NodeProcess {
        let name = samvirke_node::fixtures::municipality(code)
            .expect("a fixture municipality")
            .name;
        let made = init_node_dir(
            dir,
            &NodeSpec {
                municipality_code: code,
                municipality_name: name.clone(),
                peer_listen: "127.0.0.1:0".to_string(),
                local_listen: "127.0.0.1:0".to_string(),
                advertised_endpoint: None,
            },
        )
        .expect("provision the node directory");
        install_dev_certificate(dir, &name, ca, &loopback_hosts()).expect("install certificate");
        let mut text = std::fs::read_to_string(&made.config_path).expect("read node.toml");
        text.push_str(&format!(
            "\n[governance]\nsync_interval_secs = {DEV_SYNC_INTERVAL_SECS}\n"
        ));
        // The store SAMVIRKE_DEV_STORE chooses, like the in-process nodes'.
        text.push_str(
            &DevStore::from_env()
                .and_then(|store| store.config_section(&format!("process_{code}")))
                .expect("the node process's store"),
        );
        std::fs::write(&made.config_path, text).expect("write node.toml");
        NodeProcess::spawn(&made.config_path, &made.admin_token).await
    }

    /// Starts a node process on an existing node's config (`127.0.0.1:0`
    /// listeners get ports of their own); returns once it serves.
    pub async fn spawn(config_path: &Path, admin_token: &str) -> NodeProcess {
        let config = Config::load(config_path).expect("the config loads");
        let identity = NodeIdentity::load(&config).expect("the node's identity loads");
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "--ignored",
                "--exact",
                "child_node_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CONFIG, config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the node process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready, serving) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The test harness may have begun the line with the
                // test's name.
                if let Some(at) = line.find(CHILD_READY) {
                    let _ = ready.send(line[at..].to_string());
                }
            }
        });
        let line =
            tokio::task::spawn_blocking(move || serving.recv_timeout(Duration::from_secs(30)))
                .await
                .expect("the readiness wait")
                .expect("the node process says it serves");
        let address = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key))
                .and_then(|address| address.parse().ok())
                .unwrap_or_else(|| panic!("`{key}` in `{line}`"))
        };
        NodeProcess {
            peer: address("peer="),
            api: LocalApi {
                endpoint: format!("http://{}", address("local=")),
                token: admin_token.to_string(),
            },
            child,
            identity,
        }
    }

    /// The peer endpoint, as partners dial it.
    pub fn peer_endpoint(&self) -> String {
        format!("https://{}", self.peer)
    }

    /// Sends `signal` (e.g. `-STOP`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {}", self.child.id());
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the node process");
        self.child.wait().expect("reap the node process");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
