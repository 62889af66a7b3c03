//! The flow store through a real replica: ingest from simulated agents
//! over mutual TLS (`ReportFlows`, batches of 1,000 as agents send them),
//! then filtered queries (`Observe`) and the segment matrix (`FlowMatrix`)
//! over everything stored, from an operator's client, and the web
//! dashboard's views over HTTPS.
//!
//! The simulated agents and the operator are tonic clients in this
//! process, in the management namespace, each agent with its own agent
//! certificate; the replica runs as the real binary with its embedded
//! stores and the site's store key.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde::Serialize;
use tonic::transport::{ClientTlsConfig, Endpoint};
use wardline_pki as pki;
use wardline_proto::v1::{
    self, agent_api_client::AgentApiClient, management_client::ManagementClient,
};
use wardline_tls::{MAX_MESSAGE_BYTES, Role, client_tls};

use crate::bench::stats::{Summary, percentile};
use crate::bench::{Budget, Results, Section, Target, procfs};
use crate::site::{PORT, REPLICAS, Site};

/// Records per batch, as agents send them.
const BATCH: usize = 1_000;
/// Runs of each query.
const RUNS: usize = 20;

fn endpoint() -> String {
    format!("https://{}:{PORT}", REPLICAS[0])
}

async fn channel(tls: ClientTlsConfig) -> anyhow::Result<tonic::transport::Channel> {
    Ok(Endpoint::from_shared(endpoint())?
        .tls_config(tls)?
        .connect()
        .await?)
}

/// Record `i` of agent `agent`: a mix of segments, ports and verdicts
/// (one in twenty dropped), spread over the last ten minutes.
fn record(agent: usize, i: u64, now: time::OffsetDateTime) -> v1::Flow {
    let dropped = i.is_multiple_of(20);
    let host = (i % 250) as u8 + 1;
    let ward = (agent % 10) as u8;
    let time = now - time::Duration::milliseconds((i % 600_000) as i64);
    v1::Flow {
        time: time
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        node: String::new(),
        kind: if dropped { "drop" } else { "new" }.into(),
        interface: "eth1".into(),
        direction: "ingress".into(),
        src: vec![198, 18, 20 + ward, host],
        dst: vec![198, 18, 41, (i % 16) as u8 + 1],
        sport: 32_768 + (i % 28_000) as u32,
        dport: [443, 2575, 104, 22][(i % 4) as usize],
        protocol: 6,
        vlan: 0,
        src_segment: format!("ward-{ward}"),
        dst_segment: if i % 4 == 2 { "pacs" } else { "ehr" }.into(),
        verdict: if dropped { "dropped" } else { "allowed" }.into(),
        reason: if dropped {
            "default-deny"
        } else {
            "policy-allow"
        }
        .into(),
        policy: if dropped {
            String::new()
        } else {
            format!("ward-{ward}-to-ehr")
        },
        generation: 1,
        revision: 1,
        packets: 1 + i % 7,
        bytes: 60 + i % 1400,
        sequence: i + 1,
        src_mac: vec![2, 0, 0, 0, 0x14, (agent % 256) as u8],
        dst_mac: vec![2, 0, 0, 0, 0x29, 1],
    }
}

/// Where the replica serves its dashboard in the bench.
const DASHBOARD_PORT: u16 = 8443;

/// A browser's session with the dashboard: one kept-alive HTTPS
/// connection, the server checked against the site CA, and the cookie a
/// sign-in link from `DashboardLogin` opened.
struct Web {
    ca: std::path::PathBuf,
    send: hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
    cookie: String,
}

impl Web {
    async fn connect(
        ca: &std::path::Path,
    ) -> anyhow::Result<
        hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
    > {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
            roots.add(der?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect((REPLICAS[0], DASHBOARD_PORT)).await?;
        let name = rustls::pki_types::ServerName::try_from(REPLICAS[0])?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name.to_owned(), tcp)
            .await?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// Signs in with a link the operator asked for.
    async fn sign_in(
        ca: &std::path::Path,
        op: &mut ManagementClient<tonic::transport::Channel>,
    ) -> anyhow::Result<Web> {
        let link = op
            .dashboard_login(v1::DashboardLoginRequest {})
            .await?
            .into_inner()
            .url;
        let path = link
            .split_once(&format!("{DASHBOARD_PORT}"))
            .map(|(_, p)| p.to_owned())
            .context("a sign-in link")?;
        let mut web = Web {
            ca: ca.to_owned(),
            send: Web::connect(ca).await?,
            cookie: String::new(),
        };
        let r = web.request(&path).await?;
        web.cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .context("the sign-in link set no cookie")?
            .to_owned();
        Ok(web)
    }

    async fn request(
        &mut self,
        path: &str,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        // The dashboard closes a connection idle for 10 s, as a browser's
        // would be between views: dialled again then.
        if self.send.is_closed() || self.send.ready().await.is_err() {
            self.send = Web::connect(&self.ca).await?;
            self.send.ready().await?;
        }
        let req = hyper::Request::get(path)
            .header("host", format!("{}:{DASHBOARD_PORT}", REPLICAS[0]))
            .header("cookie", &self.cookie)
            .body(http_body_util::Empty::new())?;
        Ok(self.send.send_request(req).await?)
    }

    /// GETs `path` and reads the whole answer; its length in bytes.
    async fn get(&mut self, path: &str) -> anyhow::Result<usize> {
        use http_body_util::BodyExt as _;
        let r = self.request(path).await?;
        let status = r.status();
        let body = r.into_body().collect().await?.to_bytes();
        ensure!(
            status.is_success(),
            "GET {path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        Ok(body.len())
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct QueryFigures {
    query: String,
    /// observe, matrix, top or inventory.
    kind: &'static str,
    returned: u64,
    p50_ms: f64,
    p95_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FlowResults {
    quick: bool,
    agents: usize,
    records: u64,
    ingest_seconds: f64,
    records_per_second: f64,
    /// Per batch, from the call to its answer.
    batch_ms: Summary<f64>,
    stored: u64,
    refused: u64,
    queries: Vec<QueryFigures>,
    flow_store_bytes: u64,
    control_plane_rss_bytes: u64,
    seconds: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One operator query the bench times.
#[derive(Clone)]
enum Ask {
    Observe(v1::ObserveRequest),
    Matrix(v1::ObserveRequest),
    Top(v1::TopRequest),
    Inventory(v1::InventoryRequest),
    /// A dashboard API path, over its HTTPS session.
    Page(&'static str),
}

impl Ask {
    fn kind(&self) -> &'static str {
        match self {
            Ask::Observe(_) => "observe",
            Ask::Matrix(_) => "matrix",
            Ask::Top(_) => "top",
            Ask::Inventory(_) => "inventory",
            Ask::Page(_) => "dashboard",
        }
    }
}

/// Runs `ask` [`RUNS`] times; what it returned (records, connections,
/// entries or devices) and how long it took.
async fn time_query(
    op: &mut ManagementClient<tonic::transport::Channel>,
    web: &mut Web,
    name: &str,
    ask: Ask,
) -> anyhow::Result<QueryFigures> {
    let mut took = Vec::new();
    let mut returned = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        returned = match ask.clone() {
            Ask::Matrix(req) => op.flow_matrix(req).await?.into_inner().flows,
            Ask::Top(req) => op.top_flows(req).await?.into_inner().entries.len() as u64,
            Ask::Inventory(req) => op.inventory(req).await?.into_inner().devices.len() as u64,
            Ask::Page(path) => web.get(path).await? as u64,
            Ask::Observe(req) => {
                let mut stream = op.observe(req).await?.into_inner();
                let mut n = 0;
                while stream.message().await?.is_some() {
                    n += 1;
                }
                n
            }
        };
        took.push(ms(t.elapsed()));
    }
    Ok(QueryFigures {
        query: name.to_owned(),
        kind: ask.kind(),
        returned,
        p50_ms: percentile(&took, 50.0).unwrap_or(0.0),
        p95_ms: percentile(&took, 95.0).unwrap_or(0.0),
        max_ms: percentile(&took, 100.0).unwrap_or(0.0),
    })
}

pub fn run(budget: Budget) -> anyhow::Result<Section> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the flows benchmark needs root (namespaces)"
    );
    let started = Instant::now();
    let (agents, records) = if budget.quick {
        (2, 10_000u64)
    } else {
        (8, 1_000_000u64)
    };
    let mut site = Site::new();
    site.replica_flags.extend([
        "--dashboard-address".to_owned(),
        format!("{}:{DASHBOARD_PORT}", REPLICAS[0]),
    ]);
    site.start_replica(0, &site.embedded_store());
    let ca = site.ca();
    let mut tls = Vec::new();
    for a in 0..agents {
        let node = format!("flow-sim-{a}");
        let paths = pki::issue(
            &site.dir.join("ca"),
            Role::Agent,
            &node,
            &[],
            &site.dir.join("simulated"),
            1,
        )
        .with_context(|| format!("issuing the certificate of {node}"))?;
        tls.push((node, client_tls(&ca, &paths.cert, &paths.key, REPLICAS[0])?));
    }
    let operator = client_tls(
        &ca,
        &site.dir.join("ops.pem"),
        &site.dir.join("ops-key.pem"),
        REPLICAS[0],
    )?;
    let per_agent = records / agents as u64;
    let (ingest, batch_ms, stored, refused, queries) = site.ns.run_in(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async {
            let now = time::OffsetDateTime::now_utc();
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for (a, (node, tls)) in tls.into_iter().enumerate() {
                tasks.push(tokio::spawn(async move {
                    let mut client = AgentApiClient::new(channel(tls).await?)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES);
                    let mut took = Vec::new();
                    let (mut stored, mut refused) = (0u64, 0u64);
                    let mut i = 0;
                    while i < per_agent {
                        let flows: Vec<v1::Flow> = (i..(i + BATCH as u64).min(per_agent))
                            .map(|j| record(a, j, now))
                            .collect();
                        i += flows.len() as u64;
                        let t = Instant::now();
                        let answer = client
                            .report_flows(v1::FlowBatch {
                                node: node.clone(),
                                flows,
                                dropped: 0,
                                buffer: 1,
                            })
                            .await?
                            .into_inner();
                        took.push(ms(t.elapsed()));
                        stored += u64::from(answer.accepted);
                        refused += u64::from(answer.refused);
                    }
                    Ok::<_, anyhow::Error>((took, stored, refused))
                }));
            }
            let mut batch_ms = Vec::new();
            let (mut stored, mut refused) = (0, 0);
            for t in tasks {
                let (took, s, r) = t.await??;
                batch_ms.extend(took);
                stored += s;
                refused += r;
            }
            let ingest = t0.elapsed();
            let mut op = ManagementClient::new(channel(operator).await?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
            let mut web = Web::sign_in(&ca, &mut op).await?;
            let mut queries = Vec::new();
            let dropped = v1::ObserveRequest {
                verdict: "dropped".into(),
                ..Default::default()
            };
            for (name, ask) in [
                (
                    "segment matrix, every record",
                    Ask::Matrix(v1::ObserveRequest::default()),
                ),
                (
                    "dropped, the newest 100",
                    Ask::Observe(v1::ObserveRequest {
                        last: 100,
                        ..dropped.clone()
                    }),
                ),
                (
                    "one workstation to the EHR on 443, last 5 minutes",
                    Ask::Observe(v1::ObserveRequest {
                        from: "198.18.23.7".into(),
                        to: "ehr".into(),
                        port: 443,
                        since: "5m".into(),
                        ..Default::default()
                    }),
                ),
                (
                    "one ward's dropped connections, a CIDR",
                    Ask::Observe(v1::ObserveRequest {
                        from: "198.18.25.0/24".into(),
                        ..dropped.clone()
                    }),
                ),
                (
                    "top 10 sources of dropped connections, every record",
                    Ask::Top(v1::TopRequest {
                        filter: Some(dropped.clone()),
                        by: "sources".into(),
                        limit: 10,
                    }),
                ),
                (
                    "top 10 talkers, last 5 minutes",
                    Ask::Top(v1::TopRequest {
                        filter: Some(v1::ObserveRequest {
                            since: "5m".into(),
                            ..Default::default()
                        }),
                        by: "talkers".into(),
                        limit: 10,
                    }),
                ),
                (
                    "device inventory, every device",
                    Ask::Inventory(v1::InventoryRequest::default()),
                ),
                (
                    "dashboard: the matrix view (/api/matrix)",
                    Ask::Page("/api/matrix"),
                ),
                (
                    "dashboard: the flow table, newest 200 (/api/flows)",
                    Ask::Page("/api/flows"),
                ),
                (
                    "dashboard: the flow table, one ward's drops",
                    Ask::Page("/api/flows?from=198.18.25.0%2F24&verdict=dropped"),
                ),
                (
                    "dashboard: top dropped sources (/api/top)",
                    Ask::Page("/api/top?by=sources&verdict=dropped&limit=25"),
                ),
                (
                    "dashboard: the inventory view (/api/inventory)",
                    Ask::Page("/api/inventory"),
                ),
                (
                    "dashboard: the agents view (/api/agents)",
                    Ask::Page("/api/agents"),
                ),
            ] {
                queries.push(time_query(&mut op, &mut web, name, ask).await?);
            }
            Ok::<_, anyhow::Error>((ingest, batch_ms, stored, refused, queries))
        })
    })?;
    let rss = crate::bench::propagation::control_plane_pid(&site)
        .and_then(procfs::vm_rss)
        .unwrap_or(0);
    let flow_store_bytes = std::fs::metadata(site.dir.join("flows-0.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    Section::of(&FlowResults {
        quick: budget.quick,
        agents,
        records: per_agent * agents as u64,
        ingest_seconds: ingest.as_secs_f64(),
        records_per_second: (per_agent * agents as u64) as f64 / ingest.as_secs_f64(),
        batch_ms: Summary::of(&batch_ms).context("no batch sent")?,
        stored,
        refused,
        queries,
        flow_store_bytes,
        control_plane_rss_bytes: rss,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Results for FlowResults {
    fn tables(&self) -> String {
        let mut t = format!(
            "| ingest | |\n|---|---:|\n| simulated agents | {} |\n| records sent | {} |\n| stored / refused | {} / {} |\n| **records per second** | **{:.0}** |\n| batch of 1,000, call to answer: p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |\n| flow store file | {} |\n| replica VmRSS after | {} |\n",
            self.agents,
            self.records,
            self.stored,
            self.refused,
            self.records_per_second,
            self.batch_ms.median,
            self.batch_ms.p99,
            self.batch_ms.max,
            procfs::mib(self.flow_store_bytes as f64),
            procfs::mib(self.control_plane_rss_bytes as f64),
        );
        t.push_str(&format!(
            "\n| query over {} records ({RUNS} runs) | returned | p50 | p95 | max |\n|---|---:|---:|---:|---:|\n",
            self.stored
        ));
        for q in &self.queries {
            let _ = writeln!(
                t,
                "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
                q.query, q.returned, q.p50_ms, q.p95_ms, q.max_ms
            );
        }
        t
    }

    fn targets(&self) -> Vec<Target> {
        let scale = if self.quick {
            " (quick mode: the targets are set at 1,000,000 records)"
        } else {
            ""
        };
        let mut targets = vec![Target::new(
            format!(
                "ingest at least 50,000 records/s with zero loss{scale}: {:.0} records/s, {} of {} stored",
                self.records_per_second, self.stored, self.records
            ),
            self.records_per_second >= 50_000.0 && self.stored == self.records && !self.quick,
        )];
        let worst = |pick: &dyn Fn(&QueryFigures) -> bool| {
            self.queries
                .iter()
                .filter(|q| pick(q))
                .map(|q| q.p95_ms)
                .fold(0.0, f64::max)
        };
        let filtered = worst(&|q| q.kind == "observe");
        let matrix = worst(&|q| q.kind == "matrix");
        targets.push(Target::new(
            format!(
                "a filtered query over 1,000,000 stored records under 200 ms at p95{scale}: worst {filtered:.0} ms"
            ),
            filtered < 200.0 && !self.quick,
        ));
        targets.push(Target::new(
            format!("the segment matrix over 1,000,000 stored records under 200 ms at p95{scale}: {matrix:.0} ms"),
            matrix < 200.0 && !self.quick,
        ));
        let views = worst(&|q| q.kind == "dashboard");
        let slowest = self
            .queries
            .iter()
            .filter(|q| q.kind == "dashboard")
            .max_by(|a, b| a.p95_ms.total_cmp(&b.p95_ms))
            .map_or("", |q| q.query.as_str());
        targets.push(Target::new(
            format!(
                "every dashboard view's answer over 1,000,000 stored records under 200 ms at p95{scale}: worst {views:.0} ms ({slowest})"
            ),
            views < 200.0 && !self.quick,
        ));
        targets
    }

    fn how_to_read(&self) -> String {
        let mut s = format!(
            "One control-plane replica (the real binary, embedded stores, records sealed with the \
site's store key) in a management namespace. {} simulated agents, tonic clients in the bench \
process each with its own agent certificate, send {} records between them as agents do: \
`ReportFlows` batches of 1,000, each agent sending its next batch when the answer to the last \
came. **records per second**: records stored over the wall time from the first call to the \
last answer; **zero loss**: every record answered as stored. Then an operator's client runs each \
query {RUNS} times (`Observe`, reading the whole answer; `FlowMatrix`; `TopFlows`, which \
ranks every record the filter admits; `Inventory`, which reads the device \
entries kept at ingest), timed from the call to the last record; p50 / p95 / max are \
nearest-rank. The `dashboard:` rows are the web dashboard's views as a browser asks for them: \
HTTPS GETs of its JSON API over one kept-alive connection signed in with a `DashboardLogin` \
link, timed to the last byte of the answer (the same queries, plus the JSON and TLS). Ingest also keeps the device inventory up to date (one sealed entry per address a \
batch names, read and written in the batch's transaction). Records span the last ten minutes; each \
simulated agent's come from one ward's /24, as the agent on that ward's gateway sees them. A \
batch's records of one minute are stored as a block per verdict, and the \
store keeps a sealed summary beside each block (time span, address ranges, ports, protocols, \
counts by segment pair, verdict, reason and policy): a query opens only the blocks whose \
summary admits a match, so one that names a few agents' addresses or segments reads little, and \
one that matches in every block (a common port alone, say) reads them all; the matrix over whole \
blocks adds their counts without opening them. Each block also keeps a sealed tally of its \
pairs (source, destination, port, protocol, segments, verdict, reason, policy, with their \
counts): the top lists count the blocks the query's time range covers from these tallies \
and read only the blocks at the range's edges; a query naming addresses checks a block's tally before \
opening it. Records that differ only in their source port \
are one entry, but these records repeat a (source, destination, port) only every 2,000 records, \
so here a tally holds as many entries as its block holds records: what this measures is the \
tally's smaller encoding (numbers only, no allocation per entry) and nothing of the collapse \
that real traffic (a workstation's many connections to one service) gives. `last N` reads the newest blocks first and stops \
when nothing older can be newer. Everything shares the machine's 2 cores. This part took {:.0} s.",
            self.agents, self.records, self.seconds
        );
        if self.quick {
            s.push_str(
                "\n\nQuick mode: 10,000 records, a smoke of the harness, not figures to quote.",
            );
        }
        s
    }
}
