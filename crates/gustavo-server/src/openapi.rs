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
        "docker_image": {"type": "string"}, "env_vars": {"type": "object", "additionalProperties": {"type": "string"}},
        "volumes": {"type": "array", "items": {"type": "string"}}, "starting_ports": {"type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "object"}]}},
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
    "/api/v1/rollouts/{name}": {"get": {"summary": "How far the app's current revision (or its deletion) has reached each device; ?summary=true gives counts only", "responses": {"200": {"description": "rollout"}, "404": {"description": "unknown app"}}}},
    "/api/v1/groups": {"get": {"summary": "List device groups", "responses": {"200": {"description": "groups"}}}},
    "/api/v1/groups/{name}": {"get": {"summary": "Get a device group", "responses": {"200": {"description": "group"}, "404": {"description": "no such group"}}}},
    "/api/v1/nodes": {"get": {"summary": "List nodes (?group=&host=)", "responses": {"200": {"description": "nodes"}}}},
    "/api/v1/nodes/register": {"post": {"summary": "Register a node with the join token; returns the node's own token", "responses": {"200": {"description": "credential"}, "401": {"description": "bad token"}}}},
    "/api/v1/nodes/{name}": {
      "get": {"summary": "Get a node", "responses": {"200": {"description": "node"}}},
      "delete": {"summary": "Remove a node; its token stops working at once", "responses": {"204": {"description": "removed"}}}
    },
    "/api/v1/nodes/{name}/desired": {"get": {"summary": "The node's desired state; long-polls with ?after=REVISION&wait=SECONDS", "responses": {"200": {"description": "desired state"}, "304": {"description": "no newer revision within the wait"}}}},
    "/api/v1/nodes/{name}/heartbeat": {"post": {"summary": "Vitals from the node; the answer {need_status} asks for the status report again", "responses": {"200": {"description": "{need_status: bool}"}}}},
    "/api/v1/nodes/{name}/status": {"put": {"summary": "Observed containers and per-app status from the node", "responses": {"204": {"description": "recorded"}}}},
    "/api/v1/containers": {"get": {"summary": "Containers reported by nodes (?group=&host=)", "responses": {"200": {"description": "rows"}}}},
    "/api/v1/vitals": {"get": {"summary": "Latest vitals per node (?group=&host=)", "responses": {"200": {"description": "rows"}}}}
  }
}"##;

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_json_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        let routes = include_str!("lib.rs");
        for line in routes.lines().filter(|l| l.contains(".route(\"")) {
            let path = line.split('"').nth(1).unwrap();
            assert!(
                doc["paths"].get(path).is_some(),
                "{path} is not in the OpenAPI document"
            );
        }
    }
}
