//! The bridge as a `weft_runtime` remote plugin: [`NatsInstance`] implements
//! [`weft_runtime::remote::RemoteInstance`], so `Runtime::instantiate_remote` puts NATS workers on
//! a chain next to in-process plugins. Also: reading an instance's phases from the workers'
//! service info (`$SRV.INFO.<instance>`, metadata `weft.phases`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_abi::WeftPhase;
use weft_runtime::remote::{self, RemoteCall, RemoteCallError, RemoteErrorKind};

use crate::plugin::{NatsPlugin, RemoteError};
use crate::transport::NatsTransport;

/// A remote plugin instance as the phase engine sees it.
pub struct NatsInstance {
    plugin: NatsPlugin,
    phases: u32,
}

impl NatsInstance {
    /// `phases`: the mask the workers serve (from config, or [`discover`]).
    pub fn new(plugin: NatsPlugin, phases: u32) -> Arc<NatsInstance> {
        Arc::new(NatsInstance { plugin, phases })
    }

    pub fn plugin(&self) -> &NatsPlugin {
        &self.plugin
    }
}

/// The engine's view of a bridge error (it decides the answer of a fail-closed instance).
pub fn to_call_error(e: RemoteError) -> RemoteCallError {
    let kind = match &e {
        RemoteError::Disconnected | RemoteError::NoResponders { .. } | RemoteError::Publish(_) => {
            RemoteErrorKind::Unavailable
        }
        RemoteError::Overloaded(_) => RemoteErrorKind::Overloaded,
        RemoteError::Timeout => RemoteErrorKind::Timeout,
        RemoteError::Plugin { result, .. } => RemoteErrorKind::PluginFailed(*result),
        RemoteError::BadView | RemoteError::BadReply(_) => RemoteErrorKind::BadReply,
    };
    RemoteCallError::new(kind, e.to_string())
}

/// The client's W3C `traceparent` request header, passed on to the worker as a NATS header so a
/// trace continues across the hop.
fn traceparent(view: &[u8]) -> Option<&str> {
    let reader = crate::view::ViewReader::new(view).ok()?;
    let (_, value) = reader.request_headers().find(|(name, _)| *name == b"traceparent")?;
    std::str::from_utf8(value).ok()
}

impl remote::RemoteInstance for NatsInstance {
    fn phases(&self) -> u32 {
        self.phases
    }

    fn call<'a>(&'a self, phase: WeftPhase, _request_id: u64, view: &'a [u8], deadline: Duration) -> RemoteCall<'a> {
        // The request id travels in the view; the bridge reads it from there.
        Box::pin(async move {
            self.plugin
                .call_traced(phase, view, Some(Instant::now() + deadline), traceparent(view))
                .await
                .map_err(to_call_error)
        })
    }

    fn log(&self, request_id: u64, view: &[u8]) {
        if let Err(e) = self.plugin.log_detached(view, traceparent(view)) {
            self.plugin.release(request_id);
            tracing::warn!(plugin = %self.plugin.name(), request_id, "log phase not sent: {e}");
        }
    }

    fn release(&self, request_id: u64) {
        self.plugin.release(request_id);
    }
}

/// What the workers of an instance announce in their service info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `weft.plugin`: the plugin the workers run for this instance.
    pub plugin: String,
    /// `weft.phases`: the phase mask.
    pub phases: u32,
    /// `weft.worker` of each worker that answered, in the order the answers came.
    pub workers: Vec<String>,
}

/// Discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("no worker answered $SRV.INFO.{0} (is a weft-worker serving instance {0:?} running?)")]
    NoWorkers(String),
    #[error("$SRV.INFO.{instance}: {message}")]
    Bad { instance: String, message: String },
    #[error(
        "$SRV.INFO.{instance}: the workers disagree ({answers}); stop the odd workers, or list `phases:` in the \
         config"
    )]
    Disagree { instance: String, answers: String },
}

/// How long discovery keeps collecting answers after the first one (every worker of the
/// instance answers, and all must agree: one answer alone, maybe not a worker's, decides nothing).
pub const DISCOVERY_GATHER: Duration = Duration::from_millis(250);

/// Asks the workers of `instance` for their service info (`$SRV.INFO.<instance>`) and collects
/// the answers for [`DISCOVERY_GATHER`] after the first: they must all be weft workers and agree
/// on the plugin and the phases, else an error naming what each said. Fails at once when nobody
/// serves the instance (no responders), else after `timeout` without an answer.
pub async fn discover(
    transport: &NatsTransport,
    instance: &str,
    timeout: Duration,
) -> Result<ServiceInfo, DiscoverError> {
    use futures_util::StreamExt as _;
    let no_workers = || DiscoverError::NoWorkers(instance.to_owned());
    let client = transport.client();
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.map_err(|_| no_workers())?;
    client
        .publish_with_reply(format!("$SRV.INFO.{instance}"), inbox, bytes::Bytes::new())
        .await
        .map_err(|_| no_workers())?;
    let give_up = tokio::time::Instant::now() + timeout;
    let mut until = give_up;
    let mut answers: Vec<ServiceInfo> = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, sub.next()).await {
        if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            break;
        }
        answers.push(service_info(instance, &msg.payload)?);
        until = give_up.min(tokio::time::Instant::now() + DISCOVERY_GATHER);
    }
    let _ = sub.unsubscribe().await;
    agreed(instance, answers)
}

/// One `$SRV.INFO` answer, which must be a weft worker's.
fn service_info(instance: &str, payload: &[u8]) -> Result<ServiceInfo, DiscoverError> {
    let bad = |message: String| DiscoverError::Bad {
        instance: instance.to_owned(),
        message,
    };
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(default)]
        metadata: HashMap<String, String>,
    }
    let info: Info = serde_json::from_slice(payload).map_err(|e| bad(format!("not a service info: {e}")))?;
    let get = |k: &str| {
        info.metadata
            .get(k)
            .cloned()
            .ok_or_else(|| bad(format!("no {k} in the service metadata (not a weft worker?)")))
    };
    let phases = get("weft.phases")?
        .parse::<u32>()
        .map_err(|e| bad(format!("weft.phases: {e}")))?;
    Ok(ServiceInfo {
        plugin: get("weft.plugin")?,
        phases,
        workers: vec![info.metadata.get("weft.worker").cloned().unwrap_or_default()],
    })
}

/// The answers as one, if they agree on the plugin and the phases.
fn agreed(instance: &str, answers: Vec<ServiceInfo>) -> Result<ServiceInfo, DiscoverError> {
    let mut it = answers.into_iter();
    let Some(mut first) = it.next() else {
        return Err(DiscoverError::NoWorkers(instance.to_owned()));
    };
    let mut odd = Vec::new();
    for a in it {
        if (&a.plugin, a.phases) == (&first.plugin, first.phases) {
            first.workers.extend(a.workers);
        } else {
            odd.push(a);
        }
    }
    if odd.is_empty() {
        return Ok(first);
    }
    let answers = std::iter::once(&first)
        .chain(&odd)
        .map(|a| {
            format!(
                "workers {:?} say plugin {:?}, phases {:#x}",
                a.workers, a.plugin, a.phases
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(DiscoverError::Disagree {
        instance: instance.to_owned(),
        answers,
    })
}

#[cfg(test)]
mod traceparent_tests {
    use super::traceparent;
    use weft_runtime::view::{RequestHead, ViewIdentity, encode_request};

    fn view(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let uri: http::Uri = "/".parse().unwrap();
        let head = RequestHead {
            method: &http::Method::GET,
            uri: &uri,
            version: http::Version::HTTP_11,
            headers: &map,
        };
        let id = ViewIdentity {
            request_id: 1,
            slot: 0,
            generation: 1,
            client: "127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap().into(),
            scheme: "http",
            server_name: None,
        };
        let mut buf = vec![0u8; 4096];
        let n = encode_request(&mut buf, &id, 0, &head).unwrap().size;
        buf.truncate(n);
        buf
    }

    #[test]
    fn traceparent_is_taken_from_the_request_headers() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent(&view(&[("accept", "*/*"), ("traceparent", tp)])), Some(tp));
        assert_eq!(traceparent(&view(&[("accept", "*/*")])), None);
        assert_eq!(traceparent(b"garbage"), None);
    }
}

#[cfg(test)]
mod discovery_tests {
    use super::{DiscoverError, ServiceInfo, agreed, service_info};

    fn info(worker: &str, plugin: &str, phases: u32) -> ServiceInfo {
        ServiceInfo {
            plugin: plugin.into(),
            phases,
            workers: vec![worker.into()],
        }
    }

    #[test]
    fn answers_that_agree_are_one_and_name_every_worker() {
        let got = agreed("i", vec![info("a", "p", 3), info("b", "p", 3)]).unwrap();
        assert_eq!(
            (got.plugin.as_str(), got.phases, got.workers),
            ("p", 3, vec!["a".into(), "b".into()])
        );
        assert!(matches!(agreed("i", vec![]), Err(DiscoverError::NoWorkers(_))));
    }

    #[test]
    fn one_odd_answer_refuses_the_instance_naming_each_side() {
        for odd in [info("rogue", "p", 0), info("rogue", "other", 3)] {
            let e = agreed("i", vec![info("a", "p", 3), odd, info("b", "p", 3)]).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, DiscoverError::Disagree { .. }), "{msg}");
            assert!(
                msg.contains(r#"workers ["a", "b"] say plugin "p", phases 0x3"#),
                "{msg}"
            );
            assert!(msg.contains(r#"workers ["rogue"]"#), "{msg}");
        }
    }

    #[test]
    fn an_answer_that_is_not_a_weft_workers_is_an_error() {
        assert!(service_info("i", b"{}").is_err());
        assert!(service_info("i", b"not json").is_err());
        let ok = service_info(
            "i",
            br#"{"metadata":{"weft.plugin":"p","weft.phases":"3","weft.worker":"w"}}"#,
        );
        assert_eq!(ok.unwrap(), info("w", "p", 3));
    }
}
