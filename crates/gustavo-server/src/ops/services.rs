//! Services asked for through a device's Samsung Edge Orchestration API: the agent forwards
//! the request (as its node), the server runs it as a one-shot job on the best-scoring node
//! of the requesting device's groups (not the requester itself with `SelfSelection: false`),
//! and the requesting agent follows the job to tell its caller (`StatusCallbackURI`).
//! Services are jobs: `gustavo jobs list|get|logs` show them, named `svc-<revision>`.

use gustavo_model::access::check_spec;
use gustavo_model::compat::samsung::{ServiceRun, ServiceStarted};
use gustavo_model::job::Job;

use super::jobs::{job_changes, settle};
use super::{OpError, Ops};
use crate::now;

impl Ops {
    /// Runs a service for `node` (already authenticated as that node).
    pub async fn request_service(
        &self,
        node: &str,
        req: ServiceRun,
    ) -> Result<ServiceStarted, OpError> {
        if req.service.is_empty() || req.service.len() > 256 {
            return Err(OpError::BadRequest(
                "ServiceName must be 1 to 256 characters".into(),
            ));
        }
        req.spec
            .check("service")
            .map_err(|e| OpError::BadRequest(format!("invalid service: {e}")))?;
        let groups = self
            .shared
            .read()
            .nodes
            .get(node)
            .map(|n| n.groups.clone())
            .ok_or_else(|| OpError::NotFound(format!("node `{node}` does not exist")))?;
        // A device's request is no admin's: the device groups' policies apply.
        check_spec(&req.spec.as_app(), &groups, &self.sec.policies(), false)
            .map_err(OpError::Denied)?;
        let sched = self.shared.sched.clone();
        let expiry = self.shared.callback_expiry_s();
        let requester = node.to_string();
        let (job, transitions) = self
            .shared
            .mutate(move |c, rev| {
                let t = now();
                let name = format!("svc-{rev}");
                let mut job = Job::new(&name, req.spec, groups, rev, t);
                job.requested_by = Some(requester.clone());
                if !req.self_selection {
                    job.exclude.push(requester);
                }
                let views = sched.views(c);
                let transitions = settle(&mut job, &views, &sched.weights, rev, t);
                if job.node.is_none() {
                    return Err(OpError::NotFound(format!(
                        "no device can run service `{}`: none of the requesting device's \
                         groups has a ready, uncordoned node{}",
                        req.service,
                        if job.exclude.is_empty() {
                            ""
                        } else {
                            " other than the requester (SelfSelection is false)"
                        }
                    )));
                }
                let changes = job_changes(c, None, &job, &transitions, rev, expiry);
                Ok((changes, (job, transitions)))
            })
            .await?;
        self.job_transitions(&transitions, false);
        let target = job.node.clone().unwrap_or_default();
        let address = self
            .shared
            .read()
            .live
            .get(&target)
            .and_then(|l| l.address)
            .map(|a| a.to_string())
            .unwrap_or_default();
        self.shared.events.push(
            "job",
            format!("job:{}", job.name),
            format!(
                "service requested by {node} runs as job {} on {target}",
                job.name
            ),
        );
        Ok(ServiceStarted {
            job: job.name,
            node: target,
            address,
        })
    }

    /// A service's job, for the node that asked for it.
    pub fn service_status(&self, node: &str, job: &str) -> Result<Job, OpError> {
        self.shared
            .read()
            .jobs
            .get(job)
            .filter(|j| j.requested_by.as_deref() == Some(node))
            .cloned()
            .ok_or_else(|| OpError::NotFound(format!("no service `{job}` for node `{node}`")))
    }
}
