//! Device groups: list, get, delete, pressure. Groups are created on demand by the apps,
//! nodes and pressure settings that name them.

use gustavo_model::access::{Role, Subject};
use gustavo_model::api::Group;
use gustavo_store::Change;

use super::{OpError, Ops, check_name};

impl Ops {
    pub fn list_groups(&self, who: &Subject) -> Vec<Group> {
        self.shared
            .read()
            .group_views()
            .into_iter()
            .filter(|g| who.can_read_group(&g.name))
            .collect()
    }

    pub fn get_group(&self, who: &Subject, name: &str) -> Result<Group, OpError> {
        let c = self.shared.read();
        if !c.group_exists(name) || !who.can_read_group(name) {
            return Err(OpError::NotFound(format!("group `{name}` does not exist")));
        }
        Ok(c.group_view(name))
    }

    /// Sets (or, with `None`, clears) a group's node pressure thresholds, making the group
    /// if it does not exist yet; returns the revision. The group's nodes get them in their
    /// next desired state.
    pub async fn set_group_pressure(
        &self,
        who: &Subject,
        name: String,
        pressure: Option<gustavo_model::pressure::Thresholds>,
    ) -> Result<u64, OpError> {
        check_name("group", &name)?;
        let who = who.clone();
        self.shared
            .mutate(move |c, rev| {
                // Setting thresholds makes the group, as an app naming it would (so a
                // group's pressure can be set before its first device joins); clearing
                // those of a group nobody made is a mistake worth saying.
                let exists = c.group_exists(&name);
                if !who.can_read_group(&name) || !exists && pressure.is_none() {
                    return Err(OpError::NotFound(format!("group `{name}` does not exist")));
                }
                if who.role == Role::Viewer || !who.can_write_group(&name) {
                    return Err(OpError::Denied(format!(
                        "user `{}` may not change device group `{name}`",
                        who.name
                    )));
                }
                Ok((
                    vec![Change::PutGroup(gustavo_store::GroupRecord {
                        name,
                        revision: rev,
                        pressure,
                    })],
                    rev,
                ))
            })
            .await
    }

    /// Forgets a device group that nothing uses; returns the revision. A group still named
    /// by an app or a node is a conflict that lists them: deleting it would silently move
    /// work (detach apps, orphan devices), which `apps update -d` and `nodes remove` do
    /// explicitly. Policies and grants that name the group are kept: they are the admin's
    /// rules for that name, and apply again if it comes back.
    pub async fn delete_group(&self, who: &Subject, name: String) -> Result<u64, OpError> {
        check_name("group", &name)?;
        let who = who.clone();
        self.shared
            .mutate(move |c, rev| {
                let view = c.group_view(&name);
                let known =
                    c.groups.contains_key(&name) || !view.apps.is_empty() || !view.nodes.is_empty();
                if !known || !who.can_read_group(&name) {
                    return Err(OpError::NotFound(format!("group `{name}` does not exist")));
                }
                if who.role == Role::Viewer || !who.can_write_group(&name) {
                    return Err(OpError::Denied(format!(
                        "user `{}` may not delete device group `{name}`",
                        who.name
                    )));
                }
                if !view.apps.is_empty() || !view.nodes.is_empty() {
                    let mut uses = Vec::new();
                    if !view.apps.is_empty() {
                        uses.push(format!("apps {}", view.apps.join(", ")));
                    }
                    if !view.nodes.is_empty() {
                        uses.push(format!("devices {}", view.nodes.join(", ")));
                    }
                    return Err(OpError::Conflict(format!(
                        "device group `{name}` is still used by {}: move the apps with \
                         `gustavo apps update NAME -f FILE -d OTHER`, remove or regroup the \
                         devices, then delete it",
                        uses.join(" and ")
                    )));
                }
                Ok((vec![Change::DeleteGroup(name)], rev))
            })
            .await
    }
}
