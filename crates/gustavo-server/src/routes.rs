//! The v1 route table, described once: each entry gives the method, path, handler, whether
//! a token is needed, a summary, the answers and the request body's schema. The router
//! (`lib.rs`) and the OpenAPI document (`openapi.rs`) are both built from it, so a route
//! cannot exist without its description or the other way round.

use axum::Router;
use axum::routing::{MethodFilter, on};

use crate::AppState;
use crate::api::*;
use crate::{admin, http_sinfonia, jobs_api, metrics};

/// One route as the OpenAPI document describes it.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    /// Answers without a token (health, the CA, login).
    pub public: bool,
    pub summary: &'static str,
    pub responses: &'static [(u16, &'static str)],
    /// The JSON schema of the request body, when there is one.
    pub body: Option<&'static str>,
}

macro_rules! routes {
    ($( $method:ident $path:literal => $handler:path, $access:ident, $summary:literal,
        { $($code:literal => $desc:literal),* $(,)? } $(body $schema:literal)? ; )*) => {
        /// Every v1 route, in the order the document lists them.
        pub const ROUTES: &[RouteDoc] = &[
            $( RouteDoc {
                method: stringify!($method),
                path: $path,
                public: routes!(@public $access),
                summary: $summary,
                responses: &[$(($code, $desc)),*],
                body: routes!(@body $($schema)?),
            }, )*
        ];

        /// Adds every v1 route to `router`.
        pub fn add(router: Router<AppState>) -> Router<AppState> {
            router $( .route($path, on(MethodFilter::$method, $handler)) )*
        }
    };
    (@public public) => { true };
    (@public token) => { false };
    (@body $schema:literal) => { Some($schema) };
    (@body) => { None };
}

routes! {
    GET "/api/v1/health" => health, public, "Liveness; no authentication", { 200 => "ok" };
    GET "/api/v1/openapi.json" => openapi, token, "This document", { 200 => "OpenAPI document" };
    GET "/api/v1/apps" => list_apps, token, "List apps", { 200 => "apps" };
    POST "/api/v1/apps" => create_app, token, "Create an app and attach it to groups (created on demand)", { 201 => "created", 400 => "invalid", 409 => "exists", 413 => "body too large" } body "{\"type\": \"object\", \"required\": [\"name\", \"spec\"], \"properties\": {\"name\": {\"type\": \"string\"}, \"spec\": {\"$ref\": \"#/components/schemas/AppSpec\"}, \"groups\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}}}}";
    GET "/api/v1/apps/{name}" => get_app, token, "Get an app", { 200 => "app", 404 => "no such app" };
    PUT "/api/v1/apps/{name}" => update_app, token, "Replace an app's spec (and groups, when given)", { 200 => "app", 404 => "no such app" };
    DELETE "/api/v1/apps/{name}" => delete_app, token, "Delete an app: its containers leave every device", { 200 => "{revision}", 404 => "no such app" };
    GET "/api/v1/apps/{name}/history" => app_history, token, "Every revision of the app, oldest first: spec (secrets hidden), groups, digest, who, when, outcome", { 200 => "revisions", 404 => "no such app" };
    POST "/api/v1/apps/{name}/rollback" => rollback_app, token, "Put an older revision back on every device at once: {to?: REVISION}, the one before the current by default", { 200 => "app", 404 => "no such app or revision", 409 => "nothing earlier to go back to" } body "{\"type\": \"object\", \"properties\": {\"to\": {\"type\": \"integer\"}}}";
    POST "/api/v1/rollouts/{name}/{action}" => rollout_action, token, "pause, resume or abort an app's staged rollout; abort puts the previous revision back on every device", { 200 => "rollout", 404 => "no such app or action", 409 => "no staged rollout, or not in a state for this action" };
    POST "/api/v1/apps/{name}/{action}" => app_action, token, "start, stop or restart an app", { 200 => "app", 404 => "no such app or action", 409 => "restart of a stopped app" };
    GET "/api/v1/rollouts/{name}" => rollout, token, "How far the app's current revision (or its deletion) has reached each device; ?summary=true gives counts only; ?wait=S&seen=N waits up to S seconds for the converged count to move from N, a failure, or completion", { 200 => "rollout", 404 => "unknown app" };
    GET "/api/v1/groups" => list_groups, token, "List device groups", { 200 => "groups" };
    GET "/api/v1/groups/{name}" => get_group, token, "Get a device group", { 200 => "group", 404 => "no such group" };
    DELETE "/api/v1/groups/{name}" => delete_group, token, "Delete a device group that no app or node uses (rw on the group); its policy and grants are kept", { 200 => "{revision}", 404 => "no such group", 409 => "apps or nodes still use it; the message names them" };
    PUT "/api/v1/groups/{name}/pressure" => set_group_pressure, token, "Set the group's node pressure thresholds (all fields of Thresholds), creating the group if needed; its nodes act on them at once, offline too", { 200 => "{revision}", 400 => "invalid thresholds" };
    DELETE "/api/v1/groups/{name}/pressure" => clear_group_pressure, token, "Clear the group's node pressure thresholds: its nodes use the server's", { 200 => "{revision}", 404 => "no such group" };
    GET "/api/v1/nodes" => list_nodes, token, "List nodes (?group=&host=)", { 200 => "nodes" };
    POST "/api/v1/nodes/register" => register, token, "Register a node with the join token; returns the node's own token", { 200 => "{node, token, groups}: the credential and the groups the node is in", 401 => "bad token" };
    GET "/api/v1/nodes/{name}" => get_node, token, "Get a node", { 200 => "node" };
    PUT "/api/v1/watched" => import_watched, token, "Watch agentless hosts through their Glances API (FRACTAL's nodes.yaml as JSON) {hosts: [{name, address, port, orchestrator?, resources?, docker?, scope?}], pressure?} (admin); importing again updates them and keeps what pressure did", { 200 => "{added, updated, revision}", 400 => "invalid", 409 => "a node with an agent has that name" } body "{\"type\": \"object\", \"required\": [\"hosts\"], \"properties\": {\"hosts\": {\"type\": \"array\", \"items\": {\"type\": \"object\"}}, \"pressure\": {\"type\": \"object\"}}}";
    GET "/api/v1/watched" => list_watched, token, "The agentless hosts watched through Glances, with their API version and pressure records (admin)", { 200 => "hosts" };
    DELETE "/api/v1/nodes/{name}" => delete_node, token, "Remove a node; its token stops working at once", { 200 => "{revision}" };
    GET "/api/v1/nodes/{name}/desired" => desired, token, "The node's desired state; long-polls with ?after=REVISION&wait=SECONDS", { 200 => "desired state", 304 => "no newer revision within the wait" };
    POST "/api/v1/nodes/{name}/sync" => sync, token, "The agent's one request: carries its status report and vitals when they changed {after, wait, report?, heartbeat?}, then long-polls for its desired state; with the header gustavo-form: template each app comes as its shared container template plus the node's replica numbers and labels, for the agent to complete; header gustavo-need-report: 1 asks for the report again", { 200 => "desired state", 304 => "no newer revision within the wait", 403 => "not this node" } body "{\"type\": \"object\", \"properties\": {\"after\": {\"type\": \"integer\"}, \"wait\": {\"type\": \"integer\"}, \"report\": {\"type\": \"object\"}, \"heartbeat\": {\"type\": \"object\"}}}";
    POST "/api/v1/nodes/{name}/stream" => stream, token, "The agent's stream (HTTP/2 only), held open while it runs: up, newline-delimited sync requests {after, report?, delta?, heartbeat?, session, seq} (the first says which revision the agent has; delta: the apps whose status changed since the report of request base, taken only on that very report, else the whole report is asked for); down, newline-delimited frames {desired?, kept?, need_report?, deltas?, error?}: one at once in answer to the first line (deltas: true, report deltas are taken), a desired state as the node's revision passes what it was sent (with the header gustavo-deltas: 1, the apps exactly as last sent on this stream are left out and named in kept), then as things change, {} in answer to a line when nothing went down for 45 s; the header gustavo-form: template as for sync", { 200 => "application/x-ndjson frames", 400 => "not HTTP/2 (use sync)", 403 => "not this node" };
    POST "/api/v1/nodes/{name}/heartbeat" => heartbeat, token, "Vitals from the node; the answer {need_status} asks for the status report again", { 200 => "{need_status: bool}" };
    PUT "/api/v1/nodes/{name}/status" => status, token, "Observed containers and per-app status from the node", { 204 => "recorded" };
    GET "/api/v1/events" => events, token, "What the control plane did and saw (nodes offline, lost, back, cordoned, drained; replicas placed; apps changed), oldest first, kept in memory; ?after=ID&wait=S long-polls for newer ones; ?limit=N", { 200 => "events [{id, at, kind, object, message}]" };
    GET "/api/v1/scores" => scores, token, "Each visible node's placement score and its parts (free cores, memory, disk), best first; ?app=NAME also says why a node would not take that app's replicas", { 200 => "scores", 404 => "no such app" };
    POST "/api/v1/nodes/{name}/cordon" => cordon, token, "Cordon a node: no new replicas; what it runs stays (admin)", { 200 => "{revision, cordoned}", 404 => "no such node" };
    POST "/api/v1/nodes/{name}/drain" => drain, token, "Drain a node: cordon it and move its replicas off one at a time, each running elsewhere before the old copy stops (admin)", { 200 => "{revision, cordoned, draining}", 404 => "no such node" };
    POST "/api/v1/nodes/{name}/uncordon" => uncordon, token, "Lift a node's cordon or drain (admin)", { 200 => "{revision, cordoned}", 404 => "no such node" };
    GET "/api/v1/containers" => containers, token, "Containers reported by nodes (?group=&host=)", { 200 => "rows" };
    GET "/api/v1/vitals" => vitals, token, "Latest vitals per node (?group=&host=)", { 200 => "rows" };
    GET "/api/v1/stats" => stats, token, "Counts: revision, nodes, ready nodes, apps, groups", { 200 => "stats" };
    GET "/api/v1/jobs" => jobs_api::list_jobs, token, "List jobs", { 200 => "jobs" };
    POST "/api/v1/jobs" => jobs_api::run_job, token, "Run a job {name, spec, groups}: one-shot on the best node, or with spec.schedule on every member of the groups", { 201 => "job", 400 => "invalid job spec", 409 => "exists" } body "{\"type\": \"object\", \"required\": [\"name\", \"spec\"], \"properties\": {\"name\": {\"type\": \"string\"}, \"spec\": {\"$ref\": \"#/components/schemas/JobSpec\"}, \"groups\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}}}}";
    GET "/api/v1/jobs/{name}" => jobs_api::get_job, token, "Get a job with its state and recent runs (exit codes, last log lines)", { 200 => "job", 404 => "no such job" };
    DELETE "/api/v1/jobs/{name}" => jobs_api::delete_job, token, "Delete a job: its runs stop on every node", { 200 => "{revision}", 404 => "no such job" };
    POST "/api/v1/nodes/{name}/services" => jobs_api::request_service, token, "A device's Samsung API asks for a service {service, spec, self_selection, requester} (node token): it runs as a one-shot job on the best node of the device's groups", { 201 => "{job, node, address}", 400 => "invalid service", 403 => "a policy refuses it", 404 => "no node can run it" };
    GET "/api/v1/nodes/{name}/services/{job}" => jobs_api::service_status, token, "The job of a service the node asked for (node token)", { 200 => "job", 404 => "no such service for this node" };
    GET "/api/v1/callbacks" => jobs_api::callbacks, token, "Job callbacks not delivered yet, with their attempts and last error (admin)", { 200 => "callbacks" };
    GET "/api/v1/ca" => admin::ca, public, "The cluster CA (PEM); no authentication. Agents check its SHA-256 against their join token", { 200 => "PEM", 404 => "plain-HTTP server" };
    GET "/api/v1/whoami" => admin::whoami, token, "Who the token belongs to", { 200 => "{actor, role}" };
    POST "/api/v1/login" => admin::login, public, "Password to session token; no authentication; throttled per user and address", { 200 => "{user, role, token, expires_at}", 401 => "unknown user or wrong password", 429 => "too many failures; Retry-After" };
    POST "/api/v1/logout" => admin::logout, token, "Revoke the session token presented", { 204 => "revoked" };
    GET "/api/v1/tokens" => admin::list_tokens, token, "List join tokens (admin)", { 200 => "tokens, without secrets" };
    POST "/api/v1/tokens" => admin::create_token, token, "Create a join token {group?, ttl_s?, description?} (admin); the secret is returned once", { 201 => "{id, token, …}" };
    DELETE "/api/v1/tokens/{id}" => admin::revoke_token, token, "Revoke a join token (admin)", { 204 => "revoked", 404 => "no such token" };
    POST "/api/v1/nodes/{name}/rotate" => admin::rotate, token, "A new credential for the calling node; the old one stops working", { 200 => "{node, token}", 403 => "not this node" };
    GET "/api/v1/users" => admin::list_users, token, "List users (admin)", { 200 => "users" };
    POST "/api/v1/users" => admin::create_user, token, "Create a user {name, role, password, groups} (admin)", { 201 => "user", 409 => "exists" };
    DELETE "/api/v1/users/{name}" => admin::delete_user, token, "Delete a user and revoke their sessions (admin)", { 204 => "deleted" };
    GET "/api/v1/user-groups" => admin::list_user_groups, token, "List user groups with grants and members (admin)", { 200 => "user groups" };
    PUT "/api/v1/user-groups/{name}" => admin::put_user_group, token, "Set a user group's grants {apps: {NAME: ro|rw}, device_groups: {NAME: ro|rw}} (admin)", { 200 => "user group" };
    DELETE "/api/v1/user-groups/{name}" => admin::delete_user_group, token, "Delete a user group (admin)", { 204 => "deleted" };
    GET "/api/v1/policies" => admin::list_policies, token, "List device-group policies (admin)", { 200 => "policies" };
    PUT "/api/v1/policies/{group}" => admin::put_policy, token, "Set a device group's policy {allow: [privileged|devices|host-network|host-volumes], images: [...]} (admin)", { 200 => "policy" };
    DELETE "/api/v1/policies/{group}" => admin::delete_policy, token, "Remove a device group's policy (admin)", { 204 => "removed" };
    GET "/api/v1/audit" => admin::audit, token, "The audit log (?since=&user=&object=&limit=) (admin)", { 200 => "entries, oldest first" };
    POST "/api/v1/exec" => crate::api_exec::run, token, "Run a command {nodes, group?, kind: shell|docker, args, timeout_s, parallel} on nodes through their agents' long-poll (admin; each node must allow it with `gustavo agent --allow-exec`); answers when every node has: per node status exited|refused|timeout|offline|error, exit code, output", { 200 => "{command, results: [{node, status, exit_code?, stdout, stderr, duration_ms}]}", 400 => "invalid", 403 => "not an admin", 404 => "no such node or group (nothing was run)" } body "{\"type\": \"object\", \"required\": [\"kind\", \"args\", \"timeout_s\", \"parallel\"], \"properties\": {\"nodes\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}}, \"group\": {\"type\": \"string\"}, \"kind\": {\"enum\": [\"shell\", \"docker\"]}, \"args\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}}, \"timeout_s\": {\"type\": \"integer\"}, \"parallel\": {\"type\": \"integer\"}}}";
    POST "/api/v1/nodes/{name}/exec/{id}" => crate::api_exec::reply, token, "The node's answer to a command it took from its long-poll (the node's own token only)", { 204 => "delivered", 403 => "not this node", 404 => "no such command waits (timed out)" };
    GET "/api/v1/sites" => http_sinfonia::list_sites, token, "Edge sites with their nodes, live cpu_ratio/mem_ratio and deployment counts (admin)", { 200 => "sites" };
    GET "/api/v1/sites/{name}" => http_sinfonia::get_site, token, "One edge site (admin)", { 200 => "site", 404 => "no such site" };
    PUT "/api/v1/sites/{name}" => http_sinfonia::put_site, token, "Create or replace an edge site {node|group, locations, local_networks, accepted_clients, rejected_clients, resources, tunnel_endpoint} (admin); its WireGuard key is made once and kept", { 200 => "site", 400 => "invalid" } body "{\"$ref\": \"#/components/schemas/Site\"}";
    DELETE "/api/v1/sites/{name}" => http_sinfonia::delete_site, token, "Delete an edge site without live deployments (admin)", { 200 => "{revision}", 404 => "no such site", 409 => "deployments live on it" };
    GET "/api/v1/deployments" => http_sinfonia::list_deployments, token, "Per-client deployments of recipe apps, with lease state and the client's tunnel config", { 200 => "deployments" };
    GET "/api/v1/deployments/{name}" => http_sinfonia::get_deployment, token, "One deployment", { 200 => "deployment", 404 => "no such deployment" };
    DELETE "/api/v1/deployments/{name}" => http_sinfonia::delete_deployment, token, "Tear a deployment down now (rw on its app)", { 204 => "deleted", 404 => "no such deployment" };
    GET "/api/v1/explain/{uuid}" => http_sinfonia::explain, token, "How the sites rank for a client of a recipe (?client_ip=&location=lat,lon), and why each was kept or dropped; deploys nothing", { 200 => "{app, uuid, client_ip, ranking: {chain, kept, dropped}}", 404 => "no such recipe" };
    GET "/metrics" => metrics::metrics, token, "Prometheus metrics (a user's or the admin's token; OpenMetrics when asked, else text 0.0.4)", { 200 => "metrics", 401 => "no token", 403 => "a node's token" };
}
