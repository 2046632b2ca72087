//! A toxiproxy-compatible HTTP API (`sockit relay --api ADDR`): proxies are created, changed
//! and deleted at run time, and so are their toxics (the relay's faults), so toxiproxy client
//! libraries can drive sockit — for UDP too: a proxy whose `listen` and `upstream` carry the
//! `udp:` scheme is a UDP proxy, and the UDP faults are extra toxic types.
//!
//! Routes: `GET /version`, `GET|POST /proxies`, `GET|POST|DELETE /proxies/{proxy}`,
//! `GET|POST /proxies/{proxy}/toxics`, `GET|POST|DELETE /proxies/{proxy}/toxics/{toxic}`,
//! `POST /reset`, `GET /metrics` (Prometheus text). Toxics apply to connections (and UDP flows)
//! that start after the change. Bad requests get 400 with `{"error": …}` and change nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::net::Address;
use crate::relay::fault::FaultSet;
use crate::relay::{ConnRecord, Fault, Relay, RelayConfig};

/// Counters of one proxy, for `/metrics`.
#[derive(Default)]
struct Counters {
    conns: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// One toxic as the API shows it.
#[derive(Clone, Debug)]
struct Toxic {
    name: String,
    kind: String,
    stream: String,
    toxicity: f64,
    attributes: Map<String, Value>,
    fault: Fault,
}

impl Toxic {
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": self.attributes,
        })
    }
}

/// A started proxy: its stop signal and its task (awaited, so a stopped proxy's port is
/// closed before the API answers).
struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<crate::relay::RelayReport>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
    }
}

struct Proxy {
    name: String,
    listen: String,
    upstream: String,
    enabled: bool,
    toxics: Vec<Toxic>,
    faults: Arc<FaultSet>,
    running: Option<Running>,
    counters: Arc<Counters>,
}

impl Proxy {
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": self.toxics.iter().map(Toxic::json).collect::<Vec<_>>(),
        })
    }

    fn publish(&self) {
        self.faults
            .store(self.toxics.iter().map(|t| t.fault.clone()).collect());
    }
}

/// The API server's state.
pub struct Api {
    template: RelayConfig,
    proxies: Mutex<BTreeMap<String, Proxy>>,
}

type Shared = Arc<Api>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": message.into(), "status": status.as_u16() })),
    )
        .into_response()
}

fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

fn not_found(what: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("{what} not found"))
}

impl Api {
    /// An API whose proxies take every setting but addresses and faults from `template`.
    pub fn new(template: RelayConfig) -> Arc<Api> {
        Arc::new(Api {
            template,
            proxies: Mutex::new(BTreeMap::new()),
        })
    }

    /// Creates a proxy (as `POST /proxies` does); returns its JSON or the error message.
    pub async fn create(
        self: &Arc<Self>,
        name: &str,
        listen: &str,
        upstream: &str,
        enabled: bool,
    ) -> Result<Value, String> {
        let mut proxies = self.proxies.lock().await;
        if proxies.contains_key(name) {
            return Err(format!("proxy {name} already exists"));
        }
        let mut proxy = Proxy {
            name: name.to_owned(),
            listen: listen.to_owned(),
            upstream: upstream.to_owned(),
            enabled,
            toxics: Vec::new(),
            faults: FaultSet::live(Vec::new()),
            running: None,
            counters: Arc::new(Counters::default()),
        };
        if enabled {
            self.start(&mut proxy).await?;
        }
        let out = proxy.json();
        proxies.insert(name.to_owned(), proxy);
        Ok(out)
    }

    /// Binds and runs `proxy`; its `listen` becomes the bound address.
    async fn start(&self, proxy: &mut Proxy) -> Result<(), String> {
        let listen = Address::parse(&proxy.listen, None).map_err(|e| e.to_string())?;
        let target = Address::parse(&proxy.upstream, None).map_err(|e| e.to_string())?;
        let counters = proxy.counters.clone();
        let records = self.template.records.clone();
        let mut config = self.template.clone();
        config.listen = listen;
        config.target = target;
        config.faults = proxy.faults.clone();
        config.records = Arc::new(move |r: &ConnRecord| {
            counters.conns.fetch_add(1, Ordering::Relaxed);
            counters.bytes_up.fetch_add(r.bytes_up, Ordering::Relaxed);
            counters
                .bytes_down
                .fetch_add(r.bytes_down, Ordering::Relaxed);
            records(r);
        });
        let relay = Relay::bind(config)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", proxy.listen))?;
        // "tcp 127.0.0.1:4000" → "127.0.0.1:4000"; "udp …" → "udp:…"; unix stays.
        proxy.listen = match relay.local().split_once(' ') {
            Some(("tcp", a)) => a.to_owned(),
            Some((scheme, a)) => format!("{scheme}:{a}"),
            None => relay.local().to_owned(),
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(relay.run(cancel.clone()));
        proxy.running = Some(Running { cancel, task });
        Ok(())
    }

    /// Serves the API on `listener` until `shutdown`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let app = Router::new()
            .route("/version", get(version))
            .route("/proxies", get(list).post(create))
            .route("/proxies/{proxy}", get(show).post(update).delete(delete))
            .route("/proxies/{proxy}/toxics", get(toxics).post(add_toxic))
            .route(
                "/proxies/{proxy}/toxics/{toxic}",
                get(show_toxic).post(update_toxic).delete(delete_toxic),
            )
            .route("/populate", post(populate))
            .route("/reset", post(reset))
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        for proxy in self.proxies.lock().await.values() {
            if let Some(r) = &proxy.running {
                r.cancel.cancel();
            }
        }
    }
}

async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION"), "server": "sockit relay" }))
}

async fn list(State(api): State<Shared>) -> Json<Value> {
    let proxies = api.proxies.lock().await;
    Json(Value::Object(
        proxies.iter().map(|(k, p)| (k.clone(), p.json())).collect(),
    ))
}

#[derive(Deserialize)]
struct NewProxy {
    name: String,
    listen: String,
    upstream: String,
    enabled: Option<bool>,
}

/// Parses a JSON body, turning every failure into a 400 with the reason.
fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("bad request body: {e}"))
}

async fn create(State(api): State<Shared>, bytes: axum::body::Bytes) -> Response {
    let req: NewProxy = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    if req.name.is_empty() {
        return bad("missing required field: name");
    }
    match api
        .create(
            &req.name,
            &req.listen,
            &req.upstream,
            req.enabled.unwrap_or(true),
        )
        .await
    {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) if e.contains("already exists") => error(StatusCode::CONFLICT, e),
        Err(e) => bad(e),
    }
}

/// `POST /populate`: makes the listed proxies exist as given. A proxy that already exists
/// with the same `listen`, `upstream` and `enabled` is kept (with its toxics and open
/// connections); one that differs is replaced; others are left alone. Answers 201 with
/// `{"proxies":[…]}`, or 400 with the error and the proxies populated before it.
async fn populate(State(api): State<Shared>, bytes: axum::body::Bytes) -> Response {
    let reqs: Vec<NewProxy> = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let mut seen = std::collections::HashSet::new();
    for req in &reqs {
        if req.name.is_empty() {
            return bad("missing required field: name");
        }
        if !seen.insert(req.name.as_str()) {
            return bad(format!("proxy {} is listed twice", req.name));
        }
    }
    let mut done = Vec::new();
    for req in reqs {
        let enabled = req.enabled.unwrap_or(true);
        let old = {
            let mut proxies = api.proxies.lock().await;
            match proxies.get(&req.name) {
                Some(p)
                    if p.listen == req.listen
                        && p.upstream == req.upstream
                        && p.enabled == enabled =>
                {
                    done.push(p.json());
                    continue;
                }
                Some(_) => proxies.remove(&req.name),
                None => None,
            }
        };
        if let Some(running) = old.and_then(|p| p.running) {
            running.stop().await;
        }
        match api
            .create(&req.name, &req.listen, &req.upstream, enabled)
            .await
        {
            Ok(v) => done.push(v),
            Err(e) => {
                let body = json!({ "error": e, "status": 400, "proxies": done });
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
        }
    }
    (StatusCode::CREATED, Json(json!({ "proxies": done }))).into_response()
}

async fn show(State(api): State<Shared>, Path(name): Path<String>) -> Response {
    match api.proxies.lock().await.get(&name) {
        Some(p) => Json(p.json()).into_response(),
        None => not_found("proxy"),
    }
}

#[derive(Deserialize)]
struct ProxyUpdate {
    enabled: Option<bool>,
    listen: Option<String>,
    upstream: Option<String>,
}

async fn update(
    State(api): State<Shared>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    let req: ProxyUpdate = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let mut proxies = api.proxies.lock().await;
    let Some(proxy) = proxies.get_mut(&name) else {
        return not_found("proxy");
    };
    let enabled = req.enabled.unwrap_or(proxy.enabled);
    let changed = req.listen.as_ref().is_some_and(|l| *l != proxy.listen)
        || req.upstream.as_ref().is_some_and(|u| *u != proxy.upstream);
    for (value, what) in [(&req.listen, "listen"), (&req.upstream, "upstream")] {
        if let Some(v) = value {
            if let Err(e) = Address::parse(v, None) {
                return bad(format!("{what}: {e}"));
            }
        }
    }
    if changed || !enabled {
        if let Some(r) = proxy.running.take() {
            r.stop().await;
        }
    }
    if let Some(l) = req.listen {
        proxy.listen = l;
    }
    if let Some(u) = req.upstream {
        proxy.upstream = u;
    }
    proxy.enabled = enabled;
    if enabled && proxy.running.is_none() {
        if let Err(e) = api.start(proxy).await {
            proxy.enabled = false;
            return bad(e);
        }
    }
    Json(proxy.json()).into_response()
}

async fn delete(State(api): State<Shared>, Path(name): Path<String>) -> Response {
    match api.proxies.lock().await.remove(&name) {
        Some(p) => {
            if let Some(r) = p.running {
                r.stop().await;
            }
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found("proxy"),
    }
}

async fn toxics(State(api): State<Shared>, Path(name): Path<String>) -> Response {
    match api.proxies.lock().await.get(&name) {
        Some(p) => Json(p.toxics.iter().map(Toxic::json).collect::<Vec<_>>()).into_response(),
        None => not_found("proxy"),
    }
}

#[derive(Deserialize)]
struct NewToxic {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    stream: Option<String>,
    toxicity: Option<f64>,
    #[serde(default)]
    attributes: Map<String, Value>,
}

fn num(attrs: &Map<String, Value>, key: &str, default: f64) -> Result<f64, String> {
    match attrs.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| format!("attribute {key} must be a number of 0 or more")),
    }
}

/// Turns a toxic (toxiproxy's types and units, plus the UDP extension) into a fault.
fn to_fault(
    kind: &str,
    stream: &str,
    toxicity: f64,
    a: &Map<String, Value>,
) -> Result<Fault, String> {
    let dir = match stream {
        "upstream" => "up",
        "downstream" => "down",
        other => {
            return Err(format!(
                "stream must be upstream or downstream, not {other}"
            ));
        }
    };
    if !(0.0..=1.0).contains(&toxicity) {
        return Err("toxicity must be 0 to 1".into());
    }
    let spec = match kind {
        "latency" => format!(
            "latency={}ms,jitter={}ms",
            num(a, "latency", 0.0)?,
            num(a, "jitter", 0.0)?
        ),
        "bandwidth" => format!("bandwidth={}", (num(a, "rate", 0.0)? * 1000.0) as u64),
        "slow_close" => format!("slow_close={}ms", num(a, "delay", 0.0)?),
        "timeout" => format!("timeout={}ms", num(a, "timeout", 0.0)?),
        "reset_peer" => format!("reset_peer={}ms", num(a, "timeout", 0.0)?),
        "slicer" => format!(
            "slicer={},variation={},delay={}us",
            num(a, "average_size", 0.0)? as u64,
            num(a, "size_variation", 0.0)? as u64,
            num(a, "delay", 0.0)?
        ),
        "limit_data" => format!("limit_data={}", num(a, "bytes", 0.0)? as u64),
        "down" => "down".into(),
        "coalesce" => format!("coalesce={}ms", num(a, "window", 0.0)?),
        "loss" => format!(
            "loss={},burst={}",
            num(a, "probability", 0.0)?,
            num(a, "burst", 1.0)?
        ),
        "duplicate" => format!("duplicate={}", num(a, "probability", 0.0)?),
        "reorder" => format!(
            "reorder={},prob={}",
            num(a, "window", 3.0)? as u64,
            num(a, "probability", 0.25)?
        ),
        "delay" => format!(
            "latency={}ms,jitter={}ms",
            num(a, "delay", 0.0)?,
            num(a, "jitter", 0.0)?
        ),
        "rate" => format!("rate={}", num(a, "rate", 0.0)?),
        "corrupt" => format!("corrupt={}", num(a, "probability", 0.0)?),
        "truncate" => format!("truncate={}", num(a, "length", 0.0)? as u64),
        "blackhole" => "blackhole".into(),
        "drop" => format!("drop={}", num(a, "n", 0.0)? as u64),
        other => return Err(format!("unknown toxic type: {other}")),
    };
    format!("{dir}:{spec},p={toxicity}").parse()
}

fn make_toxic(req: NewToxic) -> Result<Toxic, String> {
    let stream = req.stream.unwrap_or_else(|| "downstream".into());
    let toxicity = req.toxicity.unwrap_or(1.0);
    let fault = to_fault(&req.kind, &stream, toxicity, &req.attributes)?;
    Ok(Toxic {
        name: req
            .name
            .unwrap_or_else(|| format!("{}_{}", req.kind, stream)),
        kind: req.kind,
        stream,
        toxicity,
        attributes: req.attributes,
        fault,
    })
}

async fn add_toxic(
    State(api): State<Shared>,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    let req: NewToxic = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let mut proxies = api.proxies.lock().await;
    let Some(proxy) = proxies.get_mut(&name) else {
        return not_found("proxy");
    };
    let toxic = match make_toxic(req) {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    if proxy.toxics.iter().any(|t| t.name == toxic.name) {
        return error(
            StatusCode::CONFLICT,
            format!("toxic {} already exists", toxic.name),
        );
    }
    let out = toxic.json();
    proxy.toxics.push(toxic);
    proxy.publish();
    Json(out).into_response()
}

async fn show_toxic(
    State(api): State<Shared>,
    Path((name, toxic)): Path<(String, String)>,
) -> Response {
    let proxies = api.proxies.lock().await;
    let Some(proxy) = proxies.get(&name) else {
        return not_found("proxy");
    };
    match proxy.toxics.iter().find(|t| t.name == toxic) {
        Some(t) => Json(t.json()).into_response(),
        None => not_found("toxic"),
    }
}

#[derive(Deserialize)]
struct ToxicUpdate {
    toxicity: Option<f64>,
    stream: Option<String>,
    #[serde(default)]
    attributes: Map<String, Value>,
}

async fn update_toxic(
    State(api): State<Shared>,
    Path((name, toxic)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Response {
    let req: ToxicUpdate = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let mut proxies = api.proxies.lock().await;
    let Some(proxy) = proxies.get_mut(&name) else {
        return not_found("proxy");
    };
    let Some(i) = proxy.toxics.iter().position(|t| t.name == toxic) else {
        return not_found("toxic");
    };
    let old = &proxy.toxics[i];
    let mut attributes = old.attributes.clone();
    attributes.extend(req.attributes);
    let updated = make_toxic(NewToxic {
        name: Some(old.name.clone()),
        kind: old.kind.clone(),
        stream: Some(req.stream.unwrap_or_else(|| old.stream.clone())),
        toxicity: Some(req.toxicity.unwrap_or(old.toxicity)),
        attributes,
    });
    match updated {
        Ok(t) => {
            let out = t.json();
            proxy.toxics[i] = t;
            proxy.publish();
            Json(out).into_response()
        }
        Err(e) => bad(e),
    }
}

async fn delete_toxic(
    State(api): State<Shared>,
    Path((name, toxic)): Path<(String, String)>,
) -> Response {
    let mut proxies = api.proxies.lock().await;
    let Some(proxy) = proxies.get_mut(&name) else {
        return not_found("proxy");
    };
    let before = proxy.toxics.len();
    proxy.toxics.retain(|t| t.name != toxic);
    if proxy.toxics.len() == before {
        return not_found("toxic");
    }
    proxy.publish();
    StatusCode::NO_CONTENT.into_response()
}

/// Enables every proxy and removes every toxic.
async fn reset(State(api): State<Shared>) -> Response {
    let mut proxies = api.proxies.lock().await;
    for proxy in proxies.values_mut() {
        proxy.toxics.clear();
        proxy.publish();
        if !proxy.enabled {
            proxy.enabled = true;
            if let Err(e) = api.start(proxy).await {
                proxy.enabled = false;
                return bad(e);
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn metrics(State(api): State<Shared>) -> Response {
    let proxies = api.proxies.lock().await;
    let mut out = String::new();
    let families: [(&str, &str, &str); 5] = [
        (
            "sockit_relay_proxy_enabled",
            "gauge",
            "1 if the proxy listens",
        ),
        ("sockit_relay_proxy_toxics", "gauge", "toxics on the proxy"),
        (
            "sockit_relay_connections_total",
            "counter",
            "connections or UDP flows ended",
        ),
        (
            "sockit_relay_bytes_up_total",
            "counter",
            "bytes client to upstream, ended connections",
        ),
        (
            "sockit_relay_bytes_down_total",
            "counter",
            "bytes upstream to client, ended connections",
        ),
    ];
    for (metric, kind, help) in families {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (name, p) in proxies.iter() {
            let value = match metric {
                "sockit_relay_proxy_enabled" => u64::from(p.enabled),
                "sockit_relay_proxy_toxics" => p.toxics.len() as u64,
                "sockit_relay_connections_total" => p.counters.conns.load(Ordering::Relaxed),
                "sockit_relay_bytes_up_total" => p.counters.bytes_up.load(Ordering::Relaxed),
                _ => p.counters.bytes_down.load(Ordering::Relaxed),
            };
            let label = name.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "{metric}{{proxy=\"{label}\"}} {value}");
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
