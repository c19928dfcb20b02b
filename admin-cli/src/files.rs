//! Reading and writing document files for the CLI commands.

use std::path::Path;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use samvirke_node::governance::Roster;
use samvirke_node::identity::{read_signing_key, write_public_file};

/// Arguments of `roster sign` and `agreement sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The document file; the signature is appended in place.
    pub file: PathBuf,
    /// Your signing key: a node's keys/signing.pem, or the secretariat's key.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Sign without asking (for scripts; read what is printed first).
    #[arg(long)]
    pub yes: bool,
}

/// Asks the person at the terminal to confirm `question` (y/N), unless
/// `yes` was given. Without a terminal to ask, refuses: nobody should sign
/// or pin what nobody read.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "{question} - no terminal to ask; read what is printed above and re-run with --yes"
        );
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => anyhow::bail!("not confirmed; nothing was changed"),
    }
}

/// Reads and parses a roster file.
pub fn roster(path: &Path) -> anyhow::Result<Roster> {
    Roster::parse(&read(path)?).with_context(|| format!("{} is not a valid roster", path.display()))
}

/// Reads a whole file.
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads a text file.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes a document file, replacing it through a temporary file so a
/// crash never leaves half a document.
pub fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp-write");
    write_public_file(&temporary, bytes)?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Reads a signing key file.
pub fn signing_key(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    Ok(read_signing_key(path)?)
}

/// Parses a date `YYYY-MM-DD`.
pub fn date(text: &str) -> anyhow::Result<time::Date> {
    time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| format!("`{text}` is not a date like 2025-01-01"))
}

/// Parses an RFC 3339 instant, or a date meaning 00:00 UTC that day.
pub fn instant(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    if let Ok(at) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(at);
    }
    Ok(date(text)
        .with_context(|| format!("`{text}` is neither RFC 3339 nor YYYY-MM-DD"))?
        .midnight()
        .assume_utc())
}
