//! `gustavo users …`, `gustavo user-groups …` and `gustavo policy …`: who may do what.

use anyhow::Result;
use gustavo_model::access::{Access, Grants, GroupPolicy, Privilege, Role};

use crate::cli::{Cli, Format, PolicyCmd, UserGroupsCmd, UsersCmd};
use crate::output::{ago, changed, data, show};
use crate::{EXIT_USAGE, Exit, connect};

fn usage(msg: String) -> anyhow::Error {
    Exit(EXIT_USAGE, msg).into()
}

/// The line (or JSON object) for a change that has no revision (users, grants, policies
/// live outside the desired state).
fn done(cli: &Cli, kind: &str, name: &str, what: &str) {
    match cli.output {
        Format::Table => changed(kind, name, what, None),
        f => data(
            f,
            &serde_json::json!({"kind": kind, "name": name, what: true}),
        ),
    }
}

pub async fn users(cli: &Cli, cmd: &UsersCmd) -> Result<()> {
    let client = connect::client(cli)?;
    match cmd {
        UsersCmd::Create { name, role, groups } => {
            let role = Role::parse(role).map_err(|e| usage(format!("--role: {e}")))?;
            let password = super::login::read_password("password for the new user: ", false)?;
            let u = client.create_user(name, role, &password, groups).await?;
            match cli.output {
                Format::Table => changed("user", &u.name, &format!("created ({})", u.role), None),
                f => data(f, &u),
            }
        }
        UsersCmd::List => {
            let list = client.list_users().await?;
            let rows = list
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        u.role.to_string(),
                        u.groups.join(","),
                        ago(u.created_at),
                    ]
                })
                .collect();
            show(
                cli.output,
                &list,
                &["user", "role", "groups", "created"],
                rows,
            );
        }
        UsersCmd::Delete { name } => {
            client.delete_user(name).await?;
            done(cli, "user", name, "deleted");
        }
    }
    Ok(())
}

fn grants_of(flag: &str, items: &[String]) -> Result<std::collections::BTreeMap<String, Access>> {
    let mut out = std::collections::BTreeMap::new();
    for i in items {
        let (k, v) = i
            .split_once('=')
            .ok_or_else(|| usage(format!("{flag} `{i}`: expected NAME=ro or NAME=rw")))?;
        let a = Access::parse(v).map_err(|e| usage(format!("{flag} `{i}`: {e}")))?;
        out.insert(k.to_string(), a);
    }
    Ok(out)
}

fn show_grants(g: &Grants) -> (String, String) {
    let f = |m: &std::collections::BTreeMap<String, Access>| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    };
    (f(&g.apps), f(&g.device_groups))
}

pub async fn user_groups(cli: &Cli, cmd: &UserGroupsCmd) -> Result<()> {
    let client = connect::client(cli)?;
    match cmd {
        UserGroupsCmd::Set {
            name,
            apps,
            device_groups,
        } => {
            let grants = Grants {
                apps: grants_of("--app", apps)?,
                device_groups: grants_of("--device-group", device_groups)?,
            };
            let g = client.put_user_group(name, &grants).await?;
            match cli.output {
                Format::Table => changed("user group", &g.name, "set", None),
                f => data(f, &g),
            }
        }
        UserGroupsCmd::List => {
            let list = client.list_user_groups().await?;
            let rows = list
                .iter()
                .map(|g| {
                    let (a, d) = show_grants(&g.grants);
                    vec![g.name.clone(), a, d, g.members.join(",")]
                })
                .collect();
            show(
                cli.output,
                &list,
                &["user group", "apps", "device groups", "members"],
                rows,
            );
        }
        UserGroupsCmd::Delete { name } => {
            client.delete_user_group(name).await?;
            done(cli, "user group", name, "deleted");
        }
    }
    Ok(())
}

pub async fn policy(cli: &Cli, cmd: &PolicyCmd) -> Result<()> {
    let client = connect::client(cli)?;
    match cmd {
        PolicyCmd::Set {
            group,
            allow,
            images,
        } => {
            let allow = allow
                .iter()
                .map(|a| Privilege::parse(a).map_err(|e| usage(format!("--allow: {e}"))))
                .collect::<Result<Vec<_>>>()?;
            let p = client.put_policy(group, &allow, images).await?;
            match cli.output {
                Format::Table => changed("policy", &p.group, "set", None),
                f => data(f, &p),
            }
        }
        PolicyCmd::List => {
            let list: Vec<GroupPolicy> = client.list_policies().await?;
            let rows = list
                .iter()
                .map(|p| {
                    vec![
                        p.group.clone(),
                        p.allow
                            .iter()
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        if p.images.is_empty() {
                            "any".into()
                        } else {
                            p.images.join(",")
                        },
                    ]
                })
                .collect();
            show(cli.output, &list, &["group", "allow", "images"], rows);
        }
        PolicyCmd::Delete { group } => {
            client.delete_policy(group).await?;
            done(cli, "policy", group, "deleted");
        }
    }
    Ok(())
}
