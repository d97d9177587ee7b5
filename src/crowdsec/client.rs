//! The HTTP side of the LAPI (reqwest, rustls for https): the machine's
//! login and token, alerts, deletions, and the bouncer's decision stream.

use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use reqwest::{StatusCode, Url};

use super::api::{self, Push, StreamDelta, Token};
use crate::config::{CrowdsecSettings, Secret};

/// A token this close to its expiry is renewed before use.
const RENEW_BEFORE: i64 = 60;

/// Longest part of an error body kept in an error.
const MAX_BODY: usize = 300;

/// Why a LAPI request failed; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum LapiError {
    /// The LAPI could not be reached or did not answer in time.
    #[error("cannot reach the CrowdSec LAPI at {url}: {source}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What went wrong.
        source: reqwest::Error,
    },
    /// The machine's login was refused.
    #[error(
        "the CrowdSec LAPI refused machine {machine:?} ({status}); check crowdsec.machine_id and crowdsec.password against `cscli machines list` (add it with `cscli machines add`)"
    )]
    Login {
        /// The machine.
        machine: String,
        /// The HTTP status.
        status: StatusCode,
    },
    /// The bouncer key was refused.
    #[error(
        "the CrowdSec LAPI refused the bouncer key ({0}); check crowdsec.bouncer_key against `cscli bouncers list` (add one with `cscli bouncers add astban`)"
    )]
    BouncerKey(StatusCode),
    /// Any other refusal.
    #[error("the CrowdSec LAPI answered {status} to {what}: {body}")]
    Status {
        /// What was asked.
        what: &'static str,
        /// The HTTP status.
        status: StatusCode,
        /// The start of its body.
        body: String,
    },
    /// The body was not what astban expects.
    #[error(transparent)]
    Body(#[from] api::BadBody),
}

impl LapiError {
    /// Whether the request may succeed later unchanged (the LAPI down or
    /// overloaded) rather than never (a refused alert).
    pub fn transient(&self) -> bool {
        match self {
            LapiError::Unreachable { .. } | LapiError::Login { .. } | LapiError::BouncerKey(_) => {
                true
            }
            LapiError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::UNAUTHORIZED
            }
            LapiError::Body(_) => true,
        }
    }
}

/// A client of one LAPI: the watcher (push) half keeps its token.
#[derive(Debug)]
pub struct Lapi {
    http: reqwest::Client,
    base: Url,
    machine: Option<(String, Secret)>,
    bouncer_key: Option<Secret>,
    scenarios: Vec<String>,
    token: Option<(String, Option<Timestamp>)>,
}

impl Lapi {
    /// A client for `settings`; makes no request yet.
    pub fn new(settings: &CrowdsecSettings) -> Result<Lapi, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("astban/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Lapi {
            http,
            base: settings.url.clone(),
            machine: settings.push.clone(),
            bouncer_key: settings.pull.clone(),
            scenarios: crate::crowdsec::KIND_SCENARIOS
                .iter()
                .map(|s| format!("{}/{s}", settings.scenario_prefix))
                .collect(),
            token: None,
        })
    }

    fn url(&self, path: &str) -> Url {
        // The base ends in `/` (settings) and paths are relative.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    async fn send(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, LapiError> {
        request
            .send()
            .await
            .map_err(|source| LapiError::Unreachable {
                url: format!("{} ({what})", self.base),
                source,
            })
    }

    async fn body(
        &self,
        what: &'static str,
        response: reqwest::Response,
    ) -> Result<Vec<u8>, LapiError> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| LapiError::Unreachable {
                url: format!("{} ({what})", self.base),
                source,
            })?;
        if !status.is_success() {
            // Shown in the log and in status: bounded and sanitised.
            let body = crate::failure::quote(&bytes, MAX_BODY);
            return Err(LapiError::Status { what, status, body });
        }
        Ok(bytes.to_vec())
    }

    /// Logs the machine in (`POST /v1/watchers/login`) unless its token
    /// has more than a minute left.
    async fn token(&mut self, now: Timestamp) -> Result<String, LapiError> {
        if let Some((token, expires)) = &self.token {
            let fresh = expires.is_none_or(|e| e.as_second() - now.as_second() > RENEW_BEFORE);
            if fresh {
                return Ok(token.clone());
            }
        }
        let Some((machine, password)) = &self.machine else {
            return Err(LapiError::Status {
                what: "login",
                status: StatusCode::FORBIDDEN,
                body: "crowdsec.push is off".into(),
            });
        };
        let login = api::Login {
            machine_id: machine,
            password: password.expose(),
            scenarios: self.scenarios.clone(),
        };
        let request = self.http.post(self.url("v1/watchers/login")).json(&login);
        let response = self.send("login", request).await?;
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(LapiError::Login {
                machine: machine.clone(),
                status,
            });
        }
        let body = self.body("login", response).await?;
        let token: Token = serde_json::from_slice(&body).map_err(api::BadBody)?;
        let expires = token.expires();
        self.token = Some((token.token.clone(), expires));
        Ok(token.token)
    }

    /// Sends a watcher request, logging in first and once more after a 401
    /// (a LAPI restarted with a new JWT secret).
    async fn watcher(
        &mut self,
        what: &'static str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, LapiError> {
        for attempt in 0..2 {
            let token = self.token(Timestamp::now()).await?;
            let response = self.send(what, build(&self.http, &token)).await?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.token = None;
                continue;
            }
            return self.body(what, response).await;
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Pushes `pushes` as alerts, one decision each.
    pub async fn push(&mut self, pushes: &[Push]) -> Result<(), LapiError> {
        let body = api::alerts(pushes, Timestamp::now());
        if body.is_empty() {
            return Ok(());
        }
        let url = self.url("v1/alerts");
        self.watcher("POST /v1/alerts", |http, token| {
            http.post(url.clone()).bearer_auth(token).json(&body)
        })
        .await
        .map(drop)
    }

    /// Deletes the decision on `net` made for `scenario` (astban's own;
    /// others on the same value stay).
    pub async fn delete(&mut self, net: IpNet, scenario: &str) -> Result<(), LapiError> {
        let mut url = self.url("v1/decisions");
        url.query_pairs_mut()
            .append_pair("value", &api::value(net))
            .append_pair("scenario", scenario);
        self.watcher("DELETE /v1/decisions", |http, token| {
            http.delete(url.clone()).bearer_auth(token)
        })
        .await
        .map(drop)
    }

    /// One poll of `GET /v1/decisions/stream`; `startup` asks for every
    /// decision in force rather than what changed since the last poll.
    pub async fn stream(
        &self,
        startup: bool,
        origins: &[String],
    ) -> Result<StreamDelta, LapiError> {
        let Some(key) = &self.bouncer_key else {
            return Ok(StreamDelta::default());
        };
        let mut url = self.url("v1/decisions/stream");
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("startup", if startup { "true" } else { "false" });
            if !origins.is_empty() {
                query.append_pair("origins", &origins.join(","));
            }
        }
        let request = self.http.get(url).header("X-Api-Key", key.expose());
        let response = self.send("GET /v1/decisions/stream", request).await?;
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(LapiError::BouncerKey(status));
        }
        let body = self.body("GET /v1/decisions/stream", response).await?;
        let now = Timestamp::now();
        // Large startup lists (CAPI's community blocklist is ~15,000
        // decisions) parse off the runtime's thread.
        let delta = tokio::task::spawn_blocking(move || api::parse_stream(&body, now))
            .await
            .map_err(|_| LapiError::Status {
                what: "GET /v1/decisions/stream",
                status: StatusCode::OK,
                body: "parsing the stream panicked".into(),
            })??;
        Ok(delta)
    }
}
