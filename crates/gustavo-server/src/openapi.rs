//! The OpenAPI 3.1 description of `/api/v1`, served at `/api/v1/openapi.json`. Kept by hand
//! beside the routes in `lib.rs`; a test checks that every route is described.

pub const DOCUMENT: &str = r##"{
  "openapi": "3.1.0",
  "info": {"title": "Gustavo API", "version": "1"},
  "components": {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
      "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
      "AppSpec": {"type": "object", "required": ["docker_image"], "additionalProperties": false, "properties": {
        "docker_image": {"type": "string"}, "env_vars": {"type": "object", "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}, "description": "a secret: sealed at rest, shown as {hidden: true}"}]}},
        "volumes": {"type": "array", "items": {"type": "string"}}, "starting_ports": {"type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "string", "description": "[ip:]host[:container][/tcp|udp|sctp]"}, {"type": "object", "description": "{\"[ip:]host[/proto]\": \"container[/proto]\"}"}]}},
        "running": {"type": "boolean"}, "networks": {"type": "array", "items": {"type": "string"}}, "rolling_restart": {"type": "boolean"},
        "containers_per": {"type": "object"}, "privileged": {"type": "boolean"}, "devices": {"type": "array", "items": {"type": "string"}},
        "command": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "entrypoint": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "cpus": {"type": "number"}, "memory": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        "restart": {"enum": ["no", "always", "unless-stopped", "on-failure"]}, "labels": {"type": "object"}, "healthcheck": {"type": "object"}}},
      "App": {"type": "object", "properties": {"name": {"type": "string"}, "spec": {"$ref": "#/components/schemas/AppSpec"}, "groups": {"type": "array", "items": {"type": "string"}}, "revision": {"type": "integer"}, "restart_nonce": {"type": "integer"}, "created_at": {"type": "integer"}, "updated_at": {"type": "integer"}}}
    }
  },
  "security": [{"bearer": []}],
  "paths": {
    "/api/v1/health": {"get": {"summary": "Liveness; no authentication", "security": [], "responses": {"200": {"description": "ok"}}}},
    "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI document"}}}},
    "/api/v1/apps": {
      "get": {"summary": "List apps", "responses": {"200": {"description": "apps"}}},
      "post": {"summary": "Create an app and attach it to groups (created on demand)", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["name", "spec"], "properties": {"name": {"type": "string"}, "spec": {"$ref": "#/components/schemas/AppSpec"}, "groups": {"type": "array", "items": {"type": "string"}}}}}}},
        "responses": {"201": {"description": "created"}, "400": {"description": "invalid", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "409": {"description": "exists"}, "413": {"description": "body too large"}}}
    },
    "/api/v1/apps/{name}": {
      "get": {"summary": "Get an app", "responses": {"200": {"description": "app"}, "404": {"description": "no such app"}}},
      "put": {"summary": "Replace an app's spec (and groups, when given)", "responses": {"200": {"description": "app"}, "404": {"description": "no such app"}}},
      "delete": {"summary": "Delete an app: its containers leave every device", "responses": {"200": {"description": "{revision}"}, "404": {"description": "no such app"}}}
    },
    "/api/v1/apps/{name}/{action}": {"post": {"summary": "start, stop or restart an app", "responses": {"200": {"description": "app"}, "404": {"description": "no such app or action"}, "409": {"description": "restart of a stopped app"}}}},
    "/api/v1/stats": {"get": {"summary": "Counts: revision, nodes, ready nodes, apps, groups", "responses": {"200": {"description": "stats"}}}},
    "/api/v1/rollouts/{name}": {"get": {"summary": "How far the app's current revision (or its deletion) has reached each device; ?summary=true gives counts only; ?wait=S&seen=N waits up to S seconds for the converged count to move from N, a failure, or completion", "responses": {"200": {"description": "rollout"}, "404": {"description": "unknown app"}}}},
    "/api/v1/groups": {"get": {"summary": "List device groups", "responses": {"200": {"description": "groups"}}}},
    "/api/v1/groups/{name}": {
      "get": {"summary": "Get a device group", "responses": {"200": {"description": "group"}, "404": {"description": "no such group"}}},
      "delete": {"summary": "Delete a device group that no app or node uses (rw on the group); its policy and grants are kept", "responses": {"200": {"description": "{revision}"}, "404": {"description": "no such group"}, "409": {"description": "apps or nodes still use it; the message names them"}}}
    },
    "/api/v1/nodes": {"get": {"summary": "List nodes (?group=&host=)", "responses": {"200": {"description": "nodes"}}}},
    "/api/v1/nodes/register": {"post": {"summary": "Register a node with the join token; returns the node's own token", "responses": {"200": {"description": "{node, token, groups}: the credential and the groups the node is in"}, "401": {"description": "bad token"}}}},
    "/api/v1/nodes/{name}": {
      "get": {"summary": "Get a node", "responses": {"200": {"description": "node"}}},
      "delete": {"summary": "Remove a node; its token stops working at once", "responses": {"200": {"description": "{revision}"}}}
    },
    "/api/v1/nodes/{name}/desired": {"get": {"summary": "The node's desired state; long-polls with ?after=REVISION&wait=SECONDS", "responses": {"200": {"description": "desired state"}, "304": {"description": "no newer revision within the wait"}}}},
    "/api/v1/nodes/{name}/heartbeat": {"post": {"summary": "Vitals from the node; the answer {need_status} asks for the status report again", "responses": {"200": {"description": "{need_status: bool}"}}}},
    "/api/v1/nodes/{name}/status": {"put": {"summary": "Observed containers and per-app status from the node", "responses": {"204": {"description": "recorded"}}}},
    "/api/v1/containers": {"get": {"summary": "Containers reported by nodes (?group=&host=)", "responses": {"200": {"description": "rows"}}}},
    "/api/v1/vitals": {"get": {"summary": "Latest vitals per node (?group=&host=)", "responses": {"200": {"description": "rows"}}}},
    "/api/v1/ca": {"get": {"summary": "The cluster CA (PEM); no authentication. Agents check its SHA-256 against their join token", "security": [], "responses": {"200": {"description": "PEM"}, "404": {"description": "plain-HTTP server"}}}},
    "/api/v1/whoami": {"get": {"summary": "Who the token belongs to", "responses": {"200": {"description": "{actor, role}"}}}},
    "/api/v1/login": {"post": {"summary": "Password to session token; no authentication; throttled per user and address", "security": [], "responses": {"200": {"description": "{user, role, token, expires_at}"}, "401": {"description": "unknown user or wrong password"}, "429": {"description": "too many failures; Retry-After"}}}},
    "/api/v1/logout": {"post": {"summary": "Revoke the session token presented", "responses": {"204": {"description": "revoked"}}}},
    "/api/v1/tokens": {
      "get": {"summary": "List join tokens (admin)", "responses": {"200": {"description": "tokens, without secrets"}}},
      "post": {"summary": "Create a join token {group?, ttl_s?, description?} (admin); the secret is returned once", "responses": {"201": {"description": "{id, token, …}"}}}
    },
    "/api/v1/tokens/{id}": {"delete": {"summary": "Revoke a join token (admin)", "responses": {"204": {"description": "revoked"}, "404": {"description": "no such token"}}}},
    "/api/v1/nodes/{name}/rotate": {"post": {"summary": "A new credential for the calling node; the old one stops working", "responses": {"200": {"description": "{node, token}"}, "403": {"description": "not this node"}}}},
    "/api/v1/users": {
      "get": {"summary": "List users (admin)", "responses": {"200": {"description": "users"}}},
      "post": {"summary": "Create a user {name, role, password, groups} (admin)", "responses": {"201": {"description": "user"}, "409": {"description": "exists"}}}
    },
    "/api/v1/users/{name}": {"delete": {"summary": "Delete a user and revoke their sessions (admin)", "responses": {"204": {"description": "deleted"}}}},
    "/api/v1/user-groups": {"get": {"summary": "List user groups with grants and members (admin)", "responses": {"200": {"description": "user groups"}}}},
    "/api/v1/user-groups/{name}": {
      "put": {"summary": "Set a user group's grants {apps: {NAME: ro|rw}, device_groups: {NAME: ro|rw}} (admin)", "responses": {"200": {"description": "user group"}}},
      "delete": {"summary": "Delete a user group (admin)", "responses": {"204": {"description": "deleted"}}}
    },
    "/api/v1/policies": {"get": {"summary": "List device-group policies (admin)", "responses": {"200": {"description": "policies"}}}},
    "/api/v1/policies/{group}": {
      "put": {"summary": "Set a device group's policy {allow: [privileged|devices|host-network|host-volumes], images: [...]} (admin)", "responses": {"200": {"description": "policy"}}},
      "delete": {"summary": "Remove a device group's policy (admin)", "responses": {"204": {"description": "removed"}}}
    },
    "/api/v1/audit": {"get": {"summary": "The audit log (?since=&user=&object=&limit=) (admin)", "responses": {"200": {"description": "entries, oldest first"}}}}
  }
}"##;

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_json_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        let routes = include_str!("lib.rs");
        // Route paths, whether rustfmt kept `.route("…"` on one line or not.
        for line in routes
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(".route(\"/api") || l.starts_with("\"/api/v1/"))
        {
            let path = line.split('"').nth(1).unwrap();
            assert!(
                doc["paths"].get(path).is_some(),
                "{path} is not in the OpenAPI document"
            );
        }
    }
}
