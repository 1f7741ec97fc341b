//! Client calls for edge sites, per-client deployments and the Sinfonia deploy API.

use gustavo_model::compat::sinfonia::CloudletDeployment;
use gustavo_model::lease::{DeploymentView, Explain};
use gustavo_model::sites::{Site, SiteView};
use reqwest::Method;

use crate::{Client, ClientError};

/// Percent-encodes one path segment.
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a deploy request says about the client.
#[derive(Debug, Clone, Default)]
pub struct DeployHints {
    pub client_ip: Option<String>,
    pub location: Option<String>,
    pub results: Option<usize>,
}

impl Client {
    /// Watches agentless hosts through Glances (`gustavo nodes import`).
    pub async fn import_watched(
        &self,
        req: &gustavo_model::watched::ImportRequest,
    ) -> Result<gustavo_model::watched::ImportResult, ClientError> {
        self.call(Method::PUT, "/api/v1/watched", Some(req)).await
    }

    pub async fn list_sites(&self) -> Result<Vec<SiteView>, ClientError> {
        self.call(Method::GET, "/api/v1/sites", Self::NONE).await
    }

    pub async fn put_site(&self, site: &Site) -> Result<SiteView, ClientError> {
        let path = format!("/api/v1/sites/{}", seg(&site.name));
        self.call(Method::PUT, &path, Some(site)).await
    }

    pub async fn delete_site(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/sites/{}", seg(name));
        self.call_empty(Method::DELETE, &path, Self::NONE).await
    }

    pub async fn list_deployments(&self) -> Result<Vec<DeploymentView>, ClientError> {
        self.call(Method::GET, "/api/v1/deployments", Self::NONE)
            .await
    }

    pub async fn get_deployment(&self, name: &str) -> Result<DeploymentView, ClientError> {
        let path = format!("/api/v1/deployments/{}", seg(name));
        self.call(Method::GET, &path, Self::NONE).await
    }

    pub async fn delete_deployment(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/deployments/{}", seg(name));
        self.call_empty(Method::DELETE, &path, Self::NONE).await
    }

    pub async fn explain(
        &self,
        uuid: &str,
        client_ip: Option<&str>,
        location: Option<&str>,
    ) -> Result<Explain, ClientError> {
        let mut path = format!("/api/v1/explain/{}?", seg(uuid));
        if let Some(ip) = client_ip {
            path.push_str(&format!("client_ip={}&", seg(ip)));
        }
        if let Some(l) = location {
            path.push_str(&format!("location={}&", seg(l)));
        }
        self.call(Method::GET, path.trim_end_matches(['?', '&']), Self::NONE)
            .await
    }

    /// `POST /api/v1/deploy/{uuid}/{key}` (Sinfonia's deploy call) with this client's
    /// token; `X-ClientIP` and `X-Location` from `hints`.
    pub async fn sinfonia_deploy(
        &self,
        uuid: &str,
        key_urlsafe: &str,
        hints: &DeployHints,
    ) -> Result<Vec<CloudletDeployment>, ClientError> {
        let path = format!(
            "/api/v1/deploy/{}/{}?results={}",
            seg(uuid),
            seg(key_urlsafe),
            hints.results.unwrap_or(1)
        );
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(30));
        if let Some(ip) = &hints.client_ip {
            req = req.header("X-ClientIP", ip);
        }
        if let Some(l) = &hints.location {
            req = req.header("X-Location", l);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        if status >= 400 {
            return Err(
                match serde_json::from_slice::<gustavo_model::api::ErrorBody>(&bytes) {
                    Ok(b) => ClientError::Api {
                        status,
                        code: b.error.code,
                        message: b.error.message,
                    },
                    Err(_) => ClientError::Api {
                        status,
                        code: "http".into(),
                        message: String::from_utf8_lossy(&bytes).trim().to_string(),
                    },
                },
            );
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }
}
