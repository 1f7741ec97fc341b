//! The seed's image check: before creating an app, look its image up in its registry
//! (Docker Registry HTTP API v2) and say which tags exist. It only informs; it never blocks.

use std::time::Duration;

use gustavo_model::spec::ImageRef;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct TagList {
    name: String,
    tags: Option<Vec<String>>,
}

/// Prints what the registry holds for `image`, or a warning when it cannot tell.
pub async fn check(image: &str) {
    let r = ImageRef::parse(image);
    let Some(registry) = r.registry.clone() else {
        eprintln!("note: `{image}` names no registry host; skipping the registry check");
        return;
    };
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(_) => return,
    };
    let url = format!("http://{registry}/v2/{}/tags/list", r.repository);
    let answer = match http.get(&url).send().await {
        Ok(resp) if resp.status().is_success() => resp.json::<TagList>().await.ok(),
        Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => Some(TagList {
            name: r.repository.clone(),
            tags: None,
        }),
        Ok(resp) => {
            eprintln!(
                "warning: registry {registry} answered {} for {}; cannot check the image",
                resp.status(),
                r.repository
            );
            return;
        }
        Err(e) => {
            eprintln!("warning: cannot reach registry {registry} to check the image: {e}");
            return;
        }
    };
    let Some(list) = answer else {
        eprintln!(
            "warning: registry {registry} gave an unreadable tag list for {}",
            r.repository
        );
        return;
    };
    let tags = list.tags.unwrap_or_default();
    outln!(
        "registry {registry}: {} tags [{}]",
        list.name,
        tags.join(", ")
    );
    if tags.contains(&r.tag) {
        outln!(
            "{}:{} has been found in registry {registry}",
            r.repository,
            r.tag
        );
    } else {
        eprintln!(
            "warning: {}:{} was not found in registry {registry}; devices will report a pull error until it is pushed",
            r.repository, r.tag
        );
    }
}

/// The manifest types Docker asks a registry for, so the digest the registry names is the
/// one Docker itself resolves the tag to.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.image.manifest.v1+json";

/// The digest `image`'s tag points at now, from its registry (Docker Registry HTTP API v2:
/// `HEAD /v2/NAME/manifests/TAG`, header `Docker-Content-Digest`). An image written with a
/// digest is already pinned. HTTPS is tried first, then plain HTTP (as Docker does for a
/// registry it is told is insecure, such as a local one).
pub async fn resolve_digest(image: &str) -> Result<String, String> {
    let r = ImageRef::parse(image);
    if let Some(d) = r.digest {
        return Ok(d);
    }
    let Some(registry) = r.registry.clone() else {
        return Err(format!(
            "`{image}` names no registry host (Docker Hub is not reachable from here)"
        ));
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for scheme in ["https", "http"] {
        let url = format!(
            "{scheme}://{registry}/v2/{}/manifests/{}",
            r.repository, r.tag
        );
        match http
            .head(&url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                return resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| format!("registry {registry} named no digest for {image}"));
            }
            Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                return Err(format!(
                    "{}:{} is not in registry {registry}",
                    r.repository, r.tag
                ));
            }
            Ok(resp) => last = format!("registry {registry} answered {}", resp.status()),
            Err(e) => last = format!("cannot reach registry {registry}: {e}"),
        }
    }
    Err(last)
}
