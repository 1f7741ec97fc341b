//! The OpenAPI 3.1 description of `/api/v1`, served at `/api/v1/openapi.json`: the schemas
//! below, and the paths built from the route table in `routes.rs` (the same table the
//! router is built from).

use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use crate::routes::ROUTES;

/// Shared schemas the paths refer to.
const COMPONENTS: &str = r##"{"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}, "AppSpec": {"type": "object", "required": ["docker_image"], "additionalProperties": false, "properties": {"docker_image": {"type": "string"}, "env_vars": {"type": "object", "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}, "description": "a secret: sealed at rest, shown as {hidden: true}"}]}}, "volumes": {"type": "array", "items": {"type": "string"}}, "starting_ports": {"type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "string", "description": "[ip:]host[:container][/tcp|udp|sctp]"}, {"type": "object", "description": "{\"[ip:]host[/proto]\": \"container[/proto]\"}"}]}}, "running": {"type": "boolean"}, "networks": {"type": "array", "items": {"type": "string"}}, "rolling_restart": {"type": "boolean"}, "containers_per": {"type": "object"}, "privileged": {"type": "boolean"}, "devices": {"type": "array", "items": {"type": "string"}}, "command": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}, "entrypoint": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}, "cpus": {"type": "number"}, "memory": {"oneOf": [{"type": "string"}, {"type": "integer"}]}, "restart": {"enum": ["no", "always", "unless-stopped", "on-failure"]}, "labels": {"type": "object"}, "healthcheck": {"type": "object"}}}, "App": {"type": "object", "properties": {"name": {"type": "string"}, "spec": {"$ref": "#/components/schemas/AppSpec"}, "groups": {"type": "array", "items": {"type": "string"}}, "revision": {"type": "integer"}, "restart_nonce": {"type": "integer"}, "created_at": {"type": "integer"}, "updated_at": {"type": "integer"}}}, "JobSpec": {"type": "object", "required": ["docker_image"], "additionalProperties": false, "description": "the container fields of AppSpec (docker_image, env_vars without secrets, volumes, networks, privileged, devices, command, entrypoint, cpus, memory, labels) plus the job's own", "properties": {"docker_image": {"type": "string"}, "retries": {"type": "integer", "minimum": 0, "maximum": 100}, "retry_backoff": {"type": "string", "description": "e.g. 5s; doubles per attempt, at most 5 min"}, "deadline": {"type": "string", "description": "the longest one run may take, e.g. 10m"}, "callback_url": {"type": "string", "description": "http:// or https://; a JSON POST {job, run, node, state, exit_code, time} on each state change"}, "schedule": {"type": "string", "description": "cron (5 fields, UTC) or @every N[s|m|h]"}}}, "Site": {"type": "object", "description": "an edge site: one node or the members of one group", "properties": {"name": {"type": "string"}, "node": {"type": "string"}, "group": {"type": "string"}, "endpoint": {"type": "string"}, "locations": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}, "local_networks": {"type": "array", "items": {"type": "string"}}, "accepted_clients": {"type": "array", "items": {"type": "string"}}, "rejected_clients": {"type": "array", "items": {"type": "string"}}, "resources": {"type": "object", "additionalProperties": {"type": "number"}}, "tunnel_endpoint": {"type": "string"}}}}}"##;

/// The document, built once.
pub static DOCUMENT: LazyLock<String> = LazyLock::new(|| document().to_string());

fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let mut responses = Map::new();
        for (code, desc) in r.responses {
            let mut resp = json!({"description": desc});
            if *code >= 400 {
                resp["content"] =
                    json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
            }
            responses.insert(code.to_string(), resp);
        }
        let mut op = json!({"summary": r.summary, "responses": responses});
        if r.public {
            op["security"] = json!([]);
        }
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(schema) = r.body {
            let schema: Value = serde_json::from_str(schema).expect("route body schemas are JSON");
            op["requestBody"] = json!({"content": {"application/json": {"schema": schema}}});
        }
        let entry = paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[r.method.to_lowercase()] = op;
    }
    let components: Value = serde_json::from_str(COMPONENTS).expect("the schemas are JSON");
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Gustavo API", "version": "1"},
        "components": components,
        "security": [{"bearer": []}],
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_json_and_lists_every_route() {
        let doc: Value = serde_json::from_str(&DOCUMENT).unwrap();
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_lowercase()];
            assert!(
                op.is_object(),
                "{} {} is not in the document",
                r.method,
                r.path
            );
            assert_eq!(op["summary"], r.summary);
        }
        assert_eq!(doc["paths"]["/api/v1/ca"]["get"]["security"], json!([]));
        assert_eq!(
            doc["paths"]["/api/v1/apps/{name}"]["get"]["parameters"][0]["name"],
            "name"
        );
    }
}
