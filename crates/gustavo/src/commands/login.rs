//! `gustavo login|logout|whoami`: a person's session, kept in
//! `~/.config/gustavo/client.toml` (mode 0600) beside the server's address and CA.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use gustavo_client::Client;
use gustavo_client::config::{ClientFile, ConfigError};

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
    // The server's address and CA may come from a config without a token (a logged-out one).
    let t = connect::target_for(cli, false)?;
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
        Format::Json | Format::Yaml => crate::output::data(
            cli.output,
            &serde_json::json!({
                "user": resp.user, "role": resp.role, "expires_at": resp.expires_at,
                "config": path,
            }),
        ),
        Format::Table => outln!(
            "logged in to {} as {} ({}); session kept in {}",
            t.server,
            resp.user,
            resp.role,
            path.display()
        ),
    }
    // On the server's machine the admin's config is now shadowed: say so once, here.
    if cli.config.is_none() {
        for other in connect::candidates().into_iter().filter(|p| *p != path) {
            if ClientFile::load(&other).is_ok_and(|f| f.token.is_some()) {
                eprintln!(
                    "note: commands on this machine now act as {} instead of using {}; \
                     `gustavo logout` goes back to it",
                    resp.user,
                    other.display()
                );
            }
        }
    }
    Ok(())
}

/// Ends the session kept in the user's config (or `--config`): revokes its token on the
/// server, then removes the token from the file — and the file itself when nothing else
/// is left in it — so it never shadows another config with a dead or missing token.
pub async fn logout(cli: &Cli) -> Result<()> {
    let path = match &cli.config {
        Some(p) => p.clone(),
        None => connect::user_config_path()
            .context("cannot find a home directory for the client config; pass --config")?,
    };
    let mut f = match ClientFile::load(&path) {
        Ok(f) => f,
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            outln!("not logged in: {} does not exist", path.display());
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let (Some(token), Some(user)) = (f.token.clone(), f.user.clone()) else {
        if f.token.is_some() {
            // The server's admin config, or one written by hand: not a session to end.
            return Err(Exit(
                1,
                format!(
                    "{} holds no login session (it names no user); leaving it as it is",
                    path.display()
                ),
            )
            .into());
        }
        outln!("not logged in: {} holds no session", path.display());
        return Ok(());
    };
    let server = cli
        .server
        .as_deref()
        .map(connect::normalize_server)
        .or_else(|| f.server.as_deref().map(connect::normalize_server))
        .unwrap_or_else(|| connect::DEFAULT_SERVER.to_string());
    let ca = match &cli.ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the CA file {}", p.display()))?,
        ),
        None => f.ca_pem()?,
    };
    match Client::with_ca(&server, &token, ca.as_deref()) {
        Ok(client) => {
            if let Err(e) = client.logout().await {
                eprintln!("warning: the server did not revoke the session: {e}");
            }
        }
        Err(e) => eprintln!("warning: the server did not revoke the session: {e}"),
    }
    f.token = None;
    f.user = None;
    let kept = if f.server.is_none() && f.ca.is_none() && f.ca_file.is_none() {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        format!("removed {}", path.display())
    } else {
        f.save(&path)?;
        format!(
            "{} keeps only the server's address and CA, for the next login",
            path.display()
        )
    };
    match cli.output {
        Format::Json | Format::Yaml => crate::output::data(
            cli.output,
            &serde_json::json!({"logged_out": user, "config": path}),
        ),
        Format::Table => outln!("user {user} logged out; {kept}"),
    }
    Ok(())
}

pub async fn whoami(cli: &Cli) -> Result<()> {
    let source = connect::target(cli)?.source;
    let w = connect::client(cli)?.whoami().await?;
    match cli.output {
        Format::Json | Format::Yaml => crate::output::data(
            cli.output,
            &serde_json::json!({
                "actor": w.actor, "role": w.role, "credentials": source.to_string(),
            }),
        ),
        Format::Table => {
            match w.role {
                Some(r) => outln!("{} ({r})", w.actor),
                None => outln!("{}", w.actor),
            }
            outln!("credentials: {source}");
        }
    }
    Ok(())
}
