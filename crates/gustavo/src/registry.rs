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
