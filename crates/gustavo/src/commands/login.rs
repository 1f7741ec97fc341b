//! `gustavo login|logout|whoami`: a person's session, kept in
//! `~/.config/gustavo/client.toml` (mode 0600) beside the server's address and CA.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use gustavo_client::Client;
use gustavo_client::config::ClientFile;

use crate::cli::{Cli, Format, LoginArgs};
use crate::output::parse_duration;
use crate::{Exit, connect};

/// Reads a password: prompted without echo on a terminal, else one line of stdin.
pub fn read_password(prompt: &str, from_stdin: bool) -> Result<String> {
    let tty = std::io::stdin().is_terminal() && !from_stdin;
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let _ = std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status();
    }
    let mut line = String::new();
    let r = std::io::stdin().lock().read_line(&mut line);
    if tty {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
        eprintln!();
    }
    r.context("cannot read the password")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err(Exit(1, "no password given".into()).into());
    }
    Ok(pw)
}

pub async fn login(cli: &Cli, args: &LoginArgs) -> Result<()> {
    let t = connect::target(cli)?;
    let password = read_password("password: ", args.password_stdin)?;
    let ttl_s = args
        .ttl
        .as_deref()
        .map(|t| parse_duration("ttl", t).map(|d| d.as_secs()))
        .transpose()?;
    let anon = Client::with_ca(&t.server, "", t.ca.as_deref())?;
    let resp = anon.login(&args.user, &password, ttl_s).await?;
    let path = match &cli.config {
        Some(p) => p.clone(),
        None => connect::user_config_path()
            .context("cannot find a home directory for the client config; pass --config")?,
    };
    ClientFile {
        server: Some(t.server.clone()),
        token: Some(resp.token.clone()),
        ca: t.ca.clone(),
        ca_file: None,
        user: Some(resp.user.clone()),
    }
    .save(&path)?;
    match cli.output {
        Format::Json => crate::output::json(&serde_json::json!({
            "user": resp.user, "role": resp.role, "expires_at": resp.expires_at,
            "config": path,
        })),
        Format::Table => outln!(
            "logged in to {} as {} ({}); session kept in {}",
            t.server,
            resp.user,
            resp.role,
            path.display()
        ),
    }
    Ok(())
}

pub async fn logout(cli: &Cli) -> Result<()> {
    let path = match &cli.config {
        Some(p) => Some(p.clone()),
        None => connect::user_config_path(),
    };
    let client = connect::client(cli)?;
    if let Err(e) = client.logout().await {
        eprintln!("warning: the server did not revoke the session: {e}");
    }
    if let Some(p) = path.filter(|p| p.exists()) {
        let mut f = ClientFile::load(&p)?;
        if f.user.is_some() {
            f.token = None;
            f.user = None;
            f.save(&p)?;
        }
        outln!("logged out ({})", p.display());
    }
    Ok(())
}

pub async fn whoami(cli: &Cli) -> Result<()> {
    let w = connect::client(cli)?.whoami().await?;
    match cli.output {
        Format::Json => crate::output::json(&w),
        Format::Table => match w.role {
            Some(r) => outln!("{} ({r})", w.actor),
            None => outln!("{}", w.actor),
        },
    }
    Ok(())
}
