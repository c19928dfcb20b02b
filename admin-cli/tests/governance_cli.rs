//! Governance files with the real `samvirke` binary: a secretariat key
//! (`key new`), a roster drafted from identity cards (`roster new`,
//! `add-member`, `remove-member`), signed and verified (`roster sign`,
//! `roster verify`, as trust anchor and as successor under its rule); an
//! agreement (`agreement draft`, `sign`, `verify --roster`); damage to any
//! byte of a signed file failing verification; and `samvirke push` of a
//! roster and an agreement to a running development node, which accepts
//! the originals and refuses a damaged copy with its reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use samvirke_node::devnet::DevFederation;
use samvirke_node::governance::document::SEPARATOR;
use samvirke_node::governance::files::IdentityCard;
use samvirke_node::identity::Fingerprint;

fn samvirke(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_samvirke"))
        .args(args)
        .output()
        .expect("run samvirke")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `samvirke args...`, asserts it succeeded and returns its stdout.
fn ok(args: &[&str]) -> String {
    let output = samvirke(args);
    assert!(
        output.status.success(),
        "samvirke {args:?} failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Runs `samvirke args...`, asserts it failed and returns its stderr.
fn fails(args: &[&str]) -> String {
    let output = samvirke(args);
    assert!(
        !output.status.success(),
        "samvirke {args:?} should have failed: {}",
        stdout(&output)
    );
    stderr(&output)
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `samvirke key new --out FILE`; returns the printed public key.
fn new_key(path: &Path) -> String {
    let text = ok(&["key", "new", "--out", arg(path)]);
    text.lines()
        .find_map(|line| line.strip_prefix("public key: "))
        .unwrap_or_else(|| panic!("no public key printed: {text}"))
        .to_string()
}

/// An identity card file for a member whose signing key is `signing_key`.
fn write_card(path: &Path, code: u32, name: &str, signing_key: &str) {
    let card = IdentityCard {
        code,
        name: name.to_string(),
        node_id: uuid::Uuid::now_v7(),
        endpoint: Some(format!("https://samvirke-{code}.example.dk:7443")),
        signing_key: signing_key.to_string(),
        tls_fingerprint: Fingerprint::of_der(format!("certificate of {code}").as_bytes())
            .to_string(),
    };
    std::fs::write(path, card.render()).expect("write identity card");
}

/// Keys and files of a small DIGIT fellowship made with the CLI.
struct Digit {
    dir: tempfile::TempDir,
    secretariat: PathBuf,
    greve: PathBuf,
    holbaek: PathBuf,
    /// Serial 1, signed by the secretariat and Greve.
    roster: PathBuf,
}

impl Digit {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Drafts serial 1 (rule quorum:1) with Greve and Holbæk from their
/// identity cards, and signs it by the secretariat and Greve.
fn digit() -> Digit {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    let (secretariat, greve, holbaek) = (path("sec.pem"), path("greve.pem"), path("holbaek.pem"));
    let secretariat_key = new_key(&secretariat);
    write_card(&path("greve.card"), 253, "Greve Kommune", &new_key(&greve));
    write_card(
        &path("holbaek.card"),
        316,
        "Holbaek Kommune",
        &new_key(&holbaek),
    );
    let roster = path("roster.toml");
    ok(&[
        "roster",
        "new",
        "--fellowship",
        "digit",
        "--name",
        "DIGIT - Digitaliseringsforeningen",
        "--secretariat-key",
        &secretariat_key,
        "--rule",
        "quorum:1",
        "--out",
        arg(&roster),
    ]);
    for card in ["greve.card", "holbaek.card"] {
        let text = ok(&[
            "roster",
            "add-member",
            arg(&roster),
            "--identity",
            arg(&path(card)),
            "--joined",
            "2016-01-01",
        ]);
        assert!(text.contains("Wrote draft serial 1"), "{text}");
    }
    let stderr = fails(&["roster", "verify", arg(&roster)]);
    assert!(
        stderr.contains("not signed by its own secretariat key"),
        "{stderr}"
    );
    ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&roster),
        "--key",
        arg(&secretariat),
    ]);
    ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&roster),
        "--key",
        arg(&greve),
    ]);
    Digit {
        dir,
        secretariat,
        greve,
        holbaek,
        roster,
    }
}

/// Byte positions to damage: the first bytes, points spread over the
/// body, the separator, parts of each signature line, the last byte.
fn flip_positions(file: &[u8]) -> Vec<usize> {
    let len = file.len();
    let separator = SEPARATOR.as_bytes();
    let at = file
        .windows(separator.len())
        .position(|w| w == separator)
        .expect("a signed file has a separator line");
    let mut positions = std::collections::BTreeSet::new();
    positions.extend([0, 1, at / 3, at / 2, 2 * at / 3, at - 1]);
    positions.extend([at, at + separator.len() / 2, at + separator.len() - 1]);
    let mut line = at + separator.len();
    while line < len {
        // `sig ed25519:` (12), key (64 hex), space, signature (128 hex), `\n`.
        positions.extend([
            line,
            line + 12,
            line + 43,
            line + 76,
            line + 140,
            line + 205,
        ]);
        line += 206;
    }
    positions.extend((1..20).map(|k| k * len / 20));
    positions.insert(len - 1);
    positions.into_iter().filter(|p| *p < len).collect()
}

/// For every position, writes `file` with that byte xor 0x01 to `damaged`
/// and asserts `samvirke args...` (which reads `damaged`) fails.
fn every_flip_fails(file: &Path, damaged: &Path, args: &[&str]) {
    let original = std::fs::read(file).expect("read the signed file");
    let positions = flip_positions(&original);
    assert!(positions.len() >= 20, "{positions:?}");
    for i in positions {
        let mut bytes = original.clone();
        bytes[i] ^= 0x01;
        std::fs::write(damaged, &bytes).expect("write the damaged copy");
        let output = samvirke(args);
        assert!(
            !output.status.success(),
            "byte {i} flipped, yet `samvirke {args:?}` succeeded: {}",
            stdout(&output)
        );
        assert!(
            stderr(&output).starts_with("samvirke: "),
            "byte {i}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_cli_roster_verifies_and_any_flipped_byte_fails_verification() {
    let digit = digit();
    let text = ok(&["roster", "verify", arg(&digit.roster)]);
    assert!(
        text.contains("Checked serial 1 of `digit`, 2 signatures"),
        "{text}"
    );

    let damaged = digit.path("damaged.toml");
    every_flip_fails(
        &digit.roster,
        &damaged,
        &["roster", "verify", arg(&damaged)],
    );

    // An identity card without an endpoint cannot become a member.
    let no_endpoint = digit.path("no-endpoint.card");
    let card = std::fs::read_to_string(digit.path("holbaek.card")).expect("card");
    let card: String = card
        .lines()
        .filter(|l| !l.starts_with("endpoint"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&no_endpoint, card).expect("write card");
    let stderr = fails(&[
        "roster",
        "add-member",
        arg(&digit.roster),
        "--identity",
        arg(&no_endpoint),
        "--joined",
        "2020-01-01",
        "--out",
        arg(&digit.path("unused.toml")),
    ]);
    assert!(stderr.contains("no endpoint"), "{stderr}");
}

#[test]
fn a_cli_roster_successor_must_be_signed_as_the_rule_demands() {
    let digit = digit();
    let next = digit.path("serial-2.toml");
    let text = ok(&[
        "roster",
        "remove-member",
        arg(&digit.roster),
        "--code",
        "316",
        "--left",
        "2025-01-01",
        "--out",
        arg(&next),
    ]);
    assert!(text.contains("Wrote draft serial 2"), "{text}");
    ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&next),
        "--key",
        arg(&digit.secretariat),
    ]);
    let stderr = fails(&[
        "roster",
        "verify",
        arg(&next),
        "--previous",
        arg(&digit.roster),
    ]);
    assert!(
        stderr.contains("rule quorum:1 needs the secretariat and 1 current member"),
        "{stderr}"
    );
    ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&next),
        "--key",
        arg(&digit.holbaek),
    ]);
    let text = ok(&[
        "roster",
        "verify",
        arg(&next),
        "--previous",
        arg(&digit.roster),
    ]);
    assert!(text.contains("OK: serial 2 of `digit`"), "{text}");
    // Damage to any byte of the successor breaks its verification too.
    let damaged = digit.path("damaged.toml");
    every_flip_fails(
        &next,
        &damaged,
        &[
            "roster",
            "verify",
            arg(&damaged),
            "--previous",
            arg(&digit.roster),
        ],
    );
}

fn draft_agreement(out: &Path) {
    let text = ok(&[
        "agreement",
        "draft",
        "--fellowship",
        "digit",
        "--provider",
        "253",
        "--consumer",
        "316",
        "--dataset",
        "greve-luftkvalitet",
        "--operation",
        "catalog",
        "--operation",
        "read",
        "--purpose",
        "Shared air quality monitoring",
        "--legal-basis-code",
        "GDPR art. 6(1)(e)",
        "--legal-basis-text",
        "Task carried out in the public interest",
        "--exclude-field",
        "cpr",
        "--valid-from",
        "2025-01-01",
        "--valid-until",
        "2030-01-01",
        "--out",
        arg(out),
    ]);
    assert!(text.contains("Wrote draft agreement"), "{text}");
}

#[test]
fn a_cli_agreement_verifies_and_any_flipped_byte_fails_verification() {
    let digit = digit();
    let agreement = digit.path("agreement.toml");
    draft_agreement(&agreement);
    ok(&[
        "agreement",
        "sign",
        "--yes",
        arg(&agreement),
        "--key",
        arg(&digit.greve),
    ]);
    let text = ok(&[
        "agreement",
        "verify",
        arg(&agreement),
        "--roster",
        arg(&digit.roster),
    ]);
    assert!(text.contains("still to sign: [316]"), "{text}");
    ok(&[
        "agreement",
        "sign",
        "--yes",
        arg(&agreement),
        "--key",
        arg(&digit.holbaek),
    ]);
    let text = ok(&[
        "agreement",
        "verify",
        arg(&agreement),
        "--roster",
        arg(&digit.roster),
    ]);
    assert!(text.contains("signed by [253, 316]"), "{text}");
    assert!(!text.contains("still to sign"), "{text}");

    let damaged = digit.path("damaged.toml");
    every_flip_fails(
        &agreement,
        &damaged,
        &[
            "agreement",
            "verify",
            arg(&damaged),
            "--roster",
            arg(&digit.roster),
        ],
    );

    // A signature by a key the roster does not list is named.
    let stranger = digit.path("stranger.pem");
    let stranger_key = new_key(&stranger);
    ok(&[
        "agreement",
        "sign",
        "--yes",
        arg(&agreement),
        "--key",
        arg(&stranger),
    ]);
    let stderr = fails(&[
        "agreement",
        "verify",
        arg(&agreement),
        "--roster",
        arg(&digit.roster),
    ]);
    assert!(stderr.contains("does not list"), "{stderr}");
    assert!(stderr.contains(&stranger_key), "{stderr}");
}

/// Runs the binary off the async runtime (the node under test shares it).
async fn samvirke_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_samvirke"))
            .args(&args)
            .output()
            .expect("run samvirke")
    })
    .await
    .expect("the CLI process task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sends_signed_files_to_a_node_which_refuses_a_damaged_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = DevFederation::start(&dir.path().join("fed"), &[253, 316])
        .await
        .expect("start two development nodes");
    let path = |name: &str| dir.path().join(name);

    // The members' real identity cards, as `samvirke identity show` prints them.
    for node in &fed.nodes {
        let card = IdentityCard::of_node(&node.running.identity, &node.running.peer_endpoint());
        std::fs::write(
            path(&format!("{}.card", node.running.identity.municipality_code)),
            card.render(),
        )
        .expect("write identity card");
    }
    let secretariat = path("sec.pem");
    let secretariat_key = new_key(&secretariat);
    let roster = path("roster.toml");
    ok(&[
        "roster",
        "new",
        "--fellowship",
        "digit",
        "--name",
        "DIGIT",
        "--secretariat-key",
        &secretariat_key,
        "--out",
        arg(&roster),
    ]);
    for code in ["253", "316"] {
        ok(&[
            "roster",
            "add-member",
            arg(&roster),
            "--identity",
            arg(&path(&format!("{code}.card"))),
            "--joined",
            "2016-01-01",
        ]);
    }
    ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&roster),
        "--key",
        arg(&secretariat),
    ]);

    let greve = &fed.nodes[0];
    let push = |file: &Path, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "push".into(),
            arg(file).into(),
            "--node".into(),
            greve.running.local_endpoint(),
            "--token".into(),
            greve.admin_token.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        samvirke_async(args)
    };

    // A damaged copy (one byte of the fellowship name) is refused with the reason.
    let original = std::fs::read(&roster).expect("read roster");
    let at = original
        .windows(b"DIGIT".len())
        .position(|w| w == b"DIGIT")
        .expect("the name is in the body");
    let mut bytes = original.clone();
    bytes[at + 2] ^= 0x01;
    let damaged = path("damaged.toml");
    std::fs::write(&damaged, &bytes).expect("write damaged copy");
    let refused = push(&damaged, &["--trust-anchor", "--yes"]).await;
    assert!(!refused.status.success(), "{}", stdout(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains("refused it (InvalidArgument)"),
        "{message}"
    );
    assert!(message.contains("bad signature"), "{message}");
    assert!(greve.running.registry.list().0.is_empty(), "nothing held");

    // Pinning asks first; without a terminal and without --yes it refuses.
    let unasked = push(&roster, &["--trust-anchor"]).await;
    assert!(!unasked.status.success());
    assert!(
        stderr(&unasked).contains("re-run with --yes"),
        "{}",
        stderr(&unasked)
    );
    assert!(greve.running.registry.list().0.is_empty(), "nothing pinned");
    let accepted = push(&roster, &["--trust-anchor", "--yes"]).await;
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    let text = stdout(&accepted);
    // What to compare out of band with the secretariat.
    let pinned = samvirke_node::governance::Roster::parse(&original).expect("roster");
    assert!(
        text.contains(&format!("digest           {}", pinned.digest())),
        "{text}"
    );
    assert!(
        text.contains(&format!("secretariat key  {secretariat_key}")),
        "{text}"
    );
    assert!(
        text.contains("accepted: roster `digit` serial 1 (2 members)"),
        "{text}"
    );
    let again = push(&roster, &[]).await;
    assert!(
        stdout(&again).contains("already held"),
        "{}",
        stderr(&again)
    );

    // An agreement signed with both nodes' own keys.
    let agreement = path("agreement.toml");
    ok(&[
        "agreement",
        "draft",
        "--fellowship",
        "digit",
        "--provider",
        "253",
        "--consumer",
        "316",
        "--dataset",
        "greve-luftkvalitet",
        "--operation",
        "read",
        "--purpose",
        "Shared air quality monitoring",
        "--legal-basis-code",
        "GDPR art. 6(1)(e)",
        "--legal-basis-text",
        "Task carried out in the public interest",
        "--valid-from",
        "2025-01-01",
        "--valid-until",
        "2099-01-01",
        "--out",
        arg(&agreement),
    ]);
    for node in &fed.nodes {
        ok(&[
            "agreement",
            "sign",
            "--yes",
            arg(&agreement),
            "--key",
            arg(&node.config.node.signing_key),
        ]);
    }
    // One byte of the purpose changed after signing: the node refuses it.
    let original = std::fs::read(&agreement).expect("read agreement");
    let at = original
        .windows(b"air quality".len())
        .position(|w| w == b"air quality")
        .expect("the purpose is in the body");
    let mut bytes = original.clone();
    bytes[at] ^= 0x01;
    std::fs::write(&damaged, &bytes).expect("write damaged copy");
    let refused = push(&damaged, &[]).await;
    assert!(!refused.status.success(), "{}", stdout(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains("refused it (InvalidArgument)"),
        "{message}"
    );
    assert!(message.contains("bad signature"), "{message}");
    assert!(
        greve.running.registry.list().1.is_empty(),
        "no agreement held"
    );

    let accepted = push(&agreement, &[]).await;
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    let text = stdout(&accepted);
    assert!(
        text.contains("accepted: agreement") && text.contains("(active: active until"),
        "{text}"
    );

    fed.shutdown().await.expect("shutdown");
}

#[test]
fn signing_shows_what_is_signed_and_asks_first() {
    let digit = digit();
    let next = digit.path("serial-2.toml");
    ok(&[
        "roster",
        "remove-member",
        arg(&digit.roster),
        "--code",
        "316",
        "--left",
        "2025-01-01",
        "--out",
        arg(&next),
    ]);
    let before = std::fs::read(&next).expect("read draft");
    // No terminal to ask and no --yes: nothing is signed, and the signer
    // is told why, after seeing exactly what serial 2 changes.
    let output = Command::new(env!("CARGO_BIN_EXE_samvirke"))
        .args([
            "roster",
            "sign",
            arg(&next),
            "--key",
            arg(&digit.secretariat),
            "--previous",
            arg(&digit.roster),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run samvirke");
    assert!(!output.status.success());
    let shown = stdout(&output);
    assert!(shown.contains("changes against serial 1:"), "{shown}");
    assert!(
        shown.contains("member Holbaek Kommune 316: left: none -> 2025-01-01"),
        "{shown}"
    );
    assert!(
        stderr(&output).contains("re-run with --yes"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read(&next).expect("read"), before, "unchanged");

    // A --previous that is not the roster this one follows is refused.
    let unrelated = digit.path("unrelated.toml");
    std::fs::copy(&next, &unrelated).expect("copy");
    let refused = fails(&[
        "roster",
        "sign",
        "--yes",
        arg(&next),
        "--key",
        arg(&digit.secretariat),
        "--previous",
        arg(&unrelated),
    ]);
    assert!(
        refused.contains("does not follow the given previous roster"),
        "{refused}"
    );

    // With --yes it signs what it showed.
    let text = ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&next),
        "--key",
        arg(&digit.secretariat),
        "--previous",
        arg(&digit.roster),
    ]);
    assert!(text.contains("Signed"), "{text}");
    assert_ne!(std::fs::read(&next).expect("read"), before);

    // An agreement's terms are shown before it is signed, too.
    let agreement = digit.path("agreement.toml");
    ok(&[
        "agreement",
        "draft",
        "--fellowship",
        "digit",
        "--provider",
        "253",
        "--consumer",
        "316",
        "--dataset",
        "greve-luftkvalitet",
        "--operation",
        "aggregate",
        "--min-group-size",
        "5",
        "--cell",
        "1d",
        "--purpose",
        "Shared air quality monitoring",
        "--legal-basis-code",
        "GDPR art. 6(1)(e)",
        "--legal-basis-text",
        "Task carried out in the public interest",
        "--valid-from",
        "2025-01-01",
        "--valid-until",
        "2099-01-01",
        "--out",
        arg(&agreement),
    ]);
    let output = Command::new(env!("CARGO_BIN_EXE_samvirke"))
        .args([
            "agreement",
            "sign",
            arg(&agreement),
            "--key",
            arg(&digit.greve),
            "--roster",
            arg(&digit.roster),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run samvirke");
    assert!(!output.status.success());
    let shown = stdout(&output);
    for part in [
        "provider      Greve Kommune 253",
        "consumers     Holbaek Kommune 316",
        "min group     5",
        "aggregates    from a fixed grid of 1d cells",
        "valid         2025-01-01T00:00:00Z .. 2099-01-01T00:00:00Z",
    ] {
        assert!(shown.contains(part), "`{part}` in:\n{shown}");
    }
}

#[test]
fn roster_verify_without_previous_says_what_it_did_not_check() {
    let digit = digit();
    // Serial 2 signed by the secretariat alone: under serial 1's rule
    // (quorum:1) every node refuses it.
    let next = digit.path("serial-2.toml");
    ok(&[
        "roster",
        "remove-member",
        arg(&digit.roster),
        "--code",
        "316",
        "--left",
        "2025-01-01",
        "--out",
        arg(&next),
    ]);
    ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&next),
        "--key",
        arg(&digit.secretariat),
    ]);
    let text = ok(&["roster", "verify", arg(&next)]);
    assert!(!text.contains("OK"), "no bare OK: {text}");
    assert!(
        text.contains("Checked serial 2 of `digit`, 1 signatures"),
        "{text}"
    );
    assert!(text.contains("every signature verifies"), "{text}");
    assert!(
        text.contains(
            "NOT checked: whether the signers satisfy the decision rule of serial 1 and follow \
             its digest, which nodes of the fellowship demand - pass --previous FILE"
        ),
        "{text}"
    );
    // With --previous the rule is checked, and the roster refused.
    let stderr = fails(&[
        "roster",
        "verify",
        arg(&next),
        "--previous",
        arg(&digit.roster),
    ]);
    assert!(stderr.contains("rule quorum:1"), "{stderr}");
    // A first roster says what pinning still needs.
    let text = ok(&["roster", "verify", arg(&digit.roster)]);
    assert!(
        text.contains("NOT checked: that this secretariat key is the fellowship's"),
        "{text}"
    );
}

/// `agreement draft` of Greve's air quality for `consumer`, checked
/// against `roster` when given; the CLI's output.
fn draft_for(out: &Path, consumer: &str, roster: Option<&Path>) -> Output {
    let mut args = vec![
        "agreement",
        "draft",
        "--fellowship",
        "digit",
        "--provider",
        "253",
        "--consumer",
        consumer,
        "--dataset",
        "greve-luftkvalitet",
        "--operation",
        "read",
        "--purpose",
        "Shared air quality monitoring",
        "--legal-basis-code",
        "GDPR art. 6(1)(e)",
        "--legal-basis-text",
        "Task carried out in the public interest",
        "--valid-from",
        "2025-06-01",
        "--valid-until",
        "2030-01-01",
        "--out",
        arg(out),
    ];
    if let Some(roster) = roster {
        args.extend(["--roster", arg(roster)]);
    }
    samvirke(&args)
}

#[test]
fn agreements_naming_non_members_or_departed_consumers_are_refused_by_draft_and_verify() {
    let digit = digit();
    // A consumer the roster does not list.
    let output = draft_for(&digit.path("a.toml"), "999", Some(&digit.roster));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("consumer 999 is not a member of `digit`"),
        "{}",
        stderr(&output)
    );
    assert!(!digit.path("a.toml").exists(), "nothing written");

    // Serial 2: Holbæk left on 2025-01-01 (before the agreement's start).
    let serial_2 = digit.path("serial-2.toml");
    ok(&[
        "roster",
        "remove-member",
        arg(&digit.roster),
        "--code",
        "316",
        "--left",
        "2025-01-01",
        "--out",
        arg(&serial_2),
    ]);
    for key in [&digit.secretariat, &digit.greve] {
        ok(&["roster", "sign", "--yes", arg(&serial_2), "--key", arg(key)]);
    }
    let output = draft_for(&digit.path("b.toml"), "316", Some(&serial_2));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(
            "consumer 316 (Holbaek Kommune) left `digit` on 2025-01-01 (roster serial 2), before \
             the agreement is in force"
        ),
        "{}",
        stderr(&output)
    );

    // Drafted against serial 1 (or without a roster), it is refused by
    // verify against serial 2.
    let agreement = digit.path("c.toml");
    let output = draft_for(&agreement, "316", Some(&digit.roster));
    assert!(output.status.success(), "{}", stderr(&output));
    ok(&[
        "agreement",
        "sign",
        "--yes",
        arg(&agreement),
        "--key",
        arg(&digit.greve),
    ]);
    ok(&[
        "agreement",
        "verify",
        arg(&agreement),
        "--roster",
        arg(&digit.roster),
    ]);
    let stderr_text = fails(&[
        "agreement",
        "verify",
        arg(&agreement),
        "--roster",
        arg(&serial_2),
    ]);
    assert!(
        stderr_text.contains("consumer 316 (Holbaek Kommune) left `digit` on 2025-01-01"),
        "{stderr_text}"
    );

    // The roster of another fellowship: both named.
    let other = digit.path("other.toml");
    let secretariat_key = new_key(&digit.path("other-sec.pem"));
    ok(&[
        "roster",
        "new",
        "--fellowship",
        "kl-data",
        "--name",
        "KL data",
        "--secretariat-key",
        &secretariat_key,
        "--out",
        arg(&other),
    ]);
    ok(&[
        "roster",
        "add-member",
        arg(&other),
        "--identity",
        arg(&digit.path("greve.card")),
        "--joined",
        "2016-01-01",
    ]);
    ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&other),
        "--key",
        arg(&digit.path("other-sec.pem")),
    ]);
    let stderr_text = fails(&[
        "agreement",
        "verify",
        arg(&agreement),
        "--roster",
        arg(&other),
    ]);
    assert!(
        stderr_text.contains("the agreement is of fellowship `digit`")
            && stderr_text.contains("is the roster of `kl-data`"),
        "{stderr_text}"
    );
}

/// `agreement draft` of Greve's for Holbæk, valid `from`..`until`.
fn draft_window(out: &Path, from: &str, until: &str) {
    ok(&[
        "agreement",
        "draft",
        "--fellowship",
        "digit",
        "--provider",
        "253",
        "--consumer",
        "316",
        "--dataset",
        "greve-luftkvalitet",
        "--operation",
        "read",
        "--purpose",
        "Shared air quality monitoring",
        "--legal-basis-code",
        "GDPR art. 6(1)(e)",
        "--legal-basis-text",
        "Task carried out in the public interest",
        "--valid-from",
        from,
        "--valid-until",
        until,
        "--out",
        arg(out),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_list_shows_members_and_each_agreements_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = DevFederation::start(&dir.path().join("fed"), &[253, 316])
        .await
        .expect("start two development nodes");
    let path = |name: &str| dir.path().join(name);
    for node in &fed.nodes {
        let card = IdentityCard::of_node(&node.running.identity, &node.running.peer_endpoint());
        std::fs::write(
            path(&format!("{}.card", node.running.identity.municipality_code)),
            card.render(),
        )
        .expect("write identity card");
    }
    let secretariat = path("sec.pem");
    let secretariat_key = new_key(&secretariat);
    let roster = path("roster.toml");
    ok(&[
        "roster",
        "new",
        "--fellowship",
        "digit",
        "--name",
        "DIGIT",
        "--secretariat-key",
        &secretariat_key,
        "--out",
        arg(&roster),
    ]);
    for code in ["253", "316"] {
        ok(&[
            "roster",
            "add-member",
            arg(&roster),
            "--identity",
            arg(&path(&format!("{code}.card"))),
            "--joined",
            "2016-01-01",
        ]);
    }
    ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&roster),
        "--key",
        arg(&secretariat),
    ]);
    // Serial 2: Holbæk leaves at the end of 2099.
    let serial_2 = path("serial-2.toml");
    ok(&[
        "roster",
        "remove-member",
        arg(&roster),
        "--code",
        "316",
        "--left",
        "2099-12-31",
        "--out",
        arg(&serial_2),
    ]);
    ok(&[
        "roster",
        "sign",
        "--yes",
        arg(&serial_2),
        "--key",
        arg(&secretariat),
    ]);
    let shown = ok(&["roster", "show", arg(&serial_2)]);
    assert!(!shown.contains("+00:00:00"), "{shown}");
    let issued = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("issued"))
        .expect("issued line")
        .trim()
        .to_string();
    assert!(
        time::OffsetDateTime::parse(&issued, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "issued `{issued}` is RFC 3339"
    );

    let greve = &fed.nodes[0];
    let push = |file: &Path, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "push".into(),
            arg(file).into(),
            "--node".into(),
            greve.running.local_endpoint(),
            "--token".into(),
            greve.admin_token.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        samvirke_async(args)
    };
    let pushed = push(&roster, &["--trust-anchor", "--yes"]).await;
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let pushed = push(&serial_2, &[]).await;
    assert!(pushed.status.success(), "{}", stderr(&pushed));

    let today = time::OffsetDateTime::now_utc().date();
    let soon = today + time::Duration::days(10);
    let soon_text = format!(
        "{:04}-{:02}-{:02}",
        soon.year(),
        u8::from(soon.month()),
        soon.day()
    );
    // (file, from, until, signed by both)
    let cases = [
        ("in-force.toml", "2025-01-01", "2099-01-01", true),
        ("waiting.toml", "2025-01-01", "2099-01-01", false),
        ("later.toml", "2098-01-01", "2099-01-01", true),
        ("expired.toml", "2020-01-01", "2021-01-01", true),
        ("expiring.toml", "2025-01-01", soon_text.as_str(), true),
    ];
    let mut ids = std::collections::HashMap::new();
    for (file, from, until, both) in cases {
        let file_path = path(file);
        draft_window(&file_path, from, until);
        let signers: &[usize] = if both { &[0, 1] } else { &[0] };
        for i in signers {
            ok(&[
                "agreement",
                "sign",
                "--yes",
                arg(&file_path),
                "--key",
                arg(&fed.nodes[*i].config.node.signing_key),
            ]);
        }
        let pushed = push(&file_path, &[]).await;
        assert!(pushed.status.success(), "{file}: {}", stderr(&pushed));
        let id = samvirke_node::governance::Agreement::parse(
            &std::fs::read(&file_path).expect("read agreement"),
        )
        .expect("agreement")
        .id()
        .to_string();
        ids.insert(file, id);
    }

    let listed = samvirke_async(vec![
        "governance".into(),
        "list".into(),
        "--node".into(),
        greve.running.local_endpoint(),
        "--token".into(),
        greve.admin_token.to_string(),
    ])
    .await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let text = stdout(&listed);
    let line_of = |file: &str| {
        let id = &ids[file];
        text.lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("agreement {id} ({file}) is listed: {text}"))
            .to_string()
    };
    let holbaek = &fed.nodes[1].config.node.municipality_name;
    assert!(text.contains("Rosters"), "{text}");
    let member_line = text
        .lines()
        .find(|l| l.contains(holbaek.as_str()))
        .unwrap_or_else(|| panic!("Holbæk is listed: {text}"));
    assert!(member_line.contains("316"), "{member_line}");
    assert!(member_line.contains("leaves 2099-12-31"), "{member_line}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("digit") && l.contains(" 2 ")),
        "{text}"
    );
    assert!(line_of("in-force.toml").ends_with("in force"), "{text}");
    assert!(
        line_of("waiting.toml").contains(&format!(
            "waiting for signatures: not signed by 316 {holbaek}"
        )),
        "{text}"
    );
    assert!(
        line_of("later.toml").contains("not yet valid: from 2098-01-01T00:00:00Z"),
        "{text}"
    );
    assert!(
        line_of("expired.toml").contains("expired: on 2021-01-01T00:00:00Z"),
        "{text}"
    );
    assert!(
        line_of("expiring.toml").contains(&format!(
            "expiring within 30 days: in force until {soon_text}T00:00:00Z"
        )),
        "{text}"
    );
    // Dates only as RFC 3339, never as the time crate's debug form.
    assert!(
        line_of("in-force.toml").contains("2099-01-01T00:00:00Z"),
        "{text}"
    );
    assert!(
        !text.contains("+00:00:00") && !text.contains(" 0:00:00"),
        "{text}"
    );

    // `push` of an agreement shows its status with RFC 3339 dates too.
    let pushed = push(&path("in-force.toml"), &[]).await;
    let said = stdout(&pushed);
    assert!(said.contains("2099-01-01T00:00:00Z"), "{said}");
    assert!(!said.contains("+00:00:00"), "{said}");

    fed.shutdown().await.expect("shutdown");
}
