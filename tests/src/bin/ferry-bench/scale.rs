//! `ferry-bench scale`: N simulated agents in this process, each with its own QUIC connection and
//! mTLS certificate, against a `ferry-server` child process whose CPU time and RSS are read from
//! `/proc/<pid>`.
//!
//! 1. Enroll and connect: per agent one bootstrap token (`POST /v1/agents/tokens`), enrollment
//!    over QUIC and the first session (Hello/Welcome), `--concurrency` agents at a time.
//! 2. Idle: the agents heartbeat (and report status) at the interval the server dictates while
//!    the server's CPU (% of one core) and RSS are sampled over `--idle-seconds`.
//! 3. Fan-out: one deployment with `replicas: N` and an empty selector, so each agent gets one
//!    replica; time from the POST until each agent received its workload and reported the
//!    replica ready, and until the deployment's status is `running` with N ready. Only if the
//!    server refuses that many replicas in one deployment (`DEPLOY_004`: N above its cap of
//!    10,000 per deployment) is the same fan-out done as one deployment per shard of ≤ 10,000
//!    agents (each agent's token carries a `bench-shard` label), POSTed 8 at a time, and the
//!    tool says so.
//!
//! Agents share one client endpoint (UDP socket) per `--per-endpoint` connections, so the
//! process needs a few dozen file descriptors, not one per agent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_tests::sim::{self, SimAgent};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{self, Api, Server, Usage, cpu_percent, mib};
use crate::stats::{Summary, ms};

/// Agents per `bench-shard` label value: the control plane's replica cap per deployment.
const SHARD: usize = ferry_control_plane::model::MAX_REPLICAS as usize;
/// How long one agent may take from token to Welcome.
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of `ferry-bench scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    agents: u64,
    /// Agents enrolling and connecting at the same time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Length of the idle measurement window, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_seconds: u64,
    /// QUIC connections per client endpoint (UDP socket).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    per_endpoint: u64,
    /// Heartbeat interval the server dictates (e.g. 5s) [default: the server's, 5s].
    #[arg(long)]
    heartbeat_interval: Option<String>,
    /// How long to wait for the fan-out to complete, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    fanout_timeout: u64,
    /// postgres://… to benchmark PostgreSQL (a fresh schema, dropped afterwards) instead of SQLite.
    #[arg(long)]
    database_url: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let opts = server::Options {
        database_url: args.database_url.clone(),
        heartbeat_interval: args.heartbeat_interval.clone(),
    };
    let mut server = Server::start(&opts).await?;
    let mut agents = Vec::new();
    let result = tokio::select! {
        r = measure(&args, &mut server, &mut agents) => r,
        e = crate::interrupted() => Err(e),
    };
    if result.is_err() {
        // Say what state things were in when it stopped (the error itself is printed last).
        println!("\nstopped early; state at that point:");
        summarize_sessions(&agents);
        if let Err(e) = server.check_alive() {
            println!("{e:#}");
        }
    }
    server.print_log_tail();
    server.stop().await;
    drop(agents);
    result
}

/// An agent that enrolled, with its shard.
struct Enrolled {
    agent: SimAgent,
    shard: usize,
}

async fn measure(args: &Args, server: &mut Server, agents: &mut Vec<Enrolled>) -> anyhow::Result<()> {
    let n = args.agents as usize;
    let backend = if args.database_url.is_some() { "PostgreSQL" } else { "SQLite" };
    println!(
        "scale: {n} simulated agents, {} enrolling at a time, {} per UDP socket, {backend}, ferry-server pid {}",
        args.concurrency,
        args.per_endpoint,
        server.pid()
    );
    let endpoints = Arc::new(sim::Endpoints::new(server.quic_addr, n, args.per_endpoint as usize)?);

    // 1. Enroll and connect.
    let before = server.usage()?;
    let started = Instant::now();
    let (enrolled, timings, failures) = enroll_all(&server.api, &endpoints, n, args.concurrency as usize).await;
    let wall = started.elapsed();
    let after = server.usage()?;
    *agents = enrolled;
    println!("\n1. enroll + connect ({} client endpoints)", endpoints.len());
    println!(
        "   {} of {n} agents connected in {:.2} s ({:.0} agents/s); ferry-server CPU {:.0} % of a core",
        agents.len(),
        wall.as_secs_f64(),
        agents.len() as f64 / wall.as_secs_f64(),
        cpu_percent(&before, &after, wall)
    );
    for (what, samples) in
        [("token (REST)", &timings.token), ("enrollment", &timings.enroll), ("first session", &timings.session)]
    {
        if let Some(s) = Summary::of(samples) {
            println!(
                "   {what:<14} per agent: p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            );
        }
    }
    if !failures.is_empty() {
        println!("   {} agent(s) failed:", failures.values().sum::<usize>());
        for (e, count) in &failures {
            println!("     {count} × {e}");
        }
    }
    if agents.is_empty() {
        bail!("no agent connected");
    }
    let mut protocols: BTreeMap<Option<u16>, usize> = BTreeMap::new();
    for a in agents.iter() {
        *protocols.entry(a.agent.with_state(|s| s.protocol)).or_default() += 1;
    }
    let protocols: Vec<String> =
        protocols.iter().map(|(p, n)| format!("{n} on protocol {}", p.map_or("?".into(), |p| p.to_string()))).collect();
    println!("   sessions: {}", protocols.join(", "));
    println!("   control plane counts {} agents connected", server.api.connected_agents().await?);

    // 2. Idle.
    let interval = agents[0].agent.with_state(|s| s.heartbeat_interval).unwrap_or(Duration::from_secs(5));
    println!("\n2. idle: {} agents heartbeating every {interval:?}, {} s window", agents.len(), args.idle_seconds);
    if Duration::from_secs(args.idle_seconds) < interval * 3 {
        println!("   (a window shorter than 3 heartbeat intervals gives noisy figures)");
    }
    // Let the last connections' first heartbeats and reports pass before measuring.
    tokio::time::sleep(interval).await;
    server.check_alive()?;
    let counters = |agents: &[Enrolled]| {
        agents
            .iter()
            .fold((0u64, 0u64), |(hb, st), a| a.agent.with_state(|s| (hb + s.heartbeats_acked, st + s.statuses_sent)))
    };
    let (hb0, st0) = counters(agents);
    let (before, own_before) = (server.usage()?, Usage::own()?);
    let window = Instant::now();
    let mut rss = Vec::new();
    while window.elapsed() < Duration::from_secs(args.idle_seconds) {
        tokio::time::sleep(Duration::from_secs(1).min(Duration::from_secs(args.idle_seconds))).await;
        rss.push(server.usage()?.rss_kib);
    }
    let wall = window.elapsed();
    let (after, own_after) = (server.usage()?, Usage::own()?);
    let (hb1, st1) = counters(agents);
    let lost = agents.iter().filter(|a| a.agent.ended().is_some()).count();
    println!(
        "   ferry-server CPU {:.1} % of a core; RSS {:.0} MiB (max {:.0} MiB in the window, peak {:.0} MiB)",
        cpu_percent(&before, &after, wall),
        mib(after.rss_kib),
        mib(rss.iter().copied().max().unwrap_or(after.rss_kib)),
        mib(after.hwm_kib)
    );
    println!(
        "   {:.0} heartbeats/s acknowledged (expected {:.0}), {:.0} status reports/s; \
         ferry-bench CPU {:.1} % of a core; {lost} session(s) lost",
        (hb1 - hb0) as f64 / wall.as_secs_f64(),
        agents.len() as f64 / interval.as_secs_f64(),
        (st1 - st0) as f64 / wall.as_secs_f64(),
        cpu_percent(&own_before, &own_after, wall)
    );
    println!("   control plane counts {} agents connected", server.api.connected_agents().await?);

    // 3. Fan-out.
    fan_out(args, server, agents).await
}

#[derive(Default)]
struct Timings {
    token: Vec<Duration>,
    enroll: Vec<Duration>,
    session: Vec<Duration>,
}

/// Enrolls and connects `n` agents, `concurrency` at a time. Failures are counted by message.
async fn enroll_all(
    api: &Api,
    endpoints: &Arc<sim::Endpoints>,
    n: usize,
    concurrency: usize,
) -> (Vec<Enrolled>, Timings, BTreeMap<String, usize>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (api, endpoints, permits) = (api.clone(), endpoints.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let shard = i / SHARD;
            let name = format!("sim-{i:05}");
            let t0 = Instant::now();
            let token = api.token(&json!({ "bench-shard": shard.to_string() })).await.map_err(|e| format!("{e:#}"))?;
            let t1 = Instant::now();
            let endpoint = endpoints.for_agent(i);
            let identity = sim::enroll(endpoint, endpoints.server(), &token, &name).await?;
            let t2 = Instant::now();
            let agent = SimAgent::start(endpoint.clone(), endpoints.server(), identity, name);
            agent.wait_connected(AGENT_TIMEOUT).await?;
            let t3 = Instant::now();
            Ok::<_, String>((Enrolled { agent, shard }, [t1 - t0, t2 - t1, t3 - t2]))
        });
    }
    let mut enrolled = Vec::with_capacity(n);
    let mut timings = Timings::default();
    let mut failures = BTreeMap::new();
    let mut last_progress = Instant::now();
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((agent, [token, enroll, session])) => {
                enrolled.push(agent);
                timings.token.push(token);
                timings.enroll.push(enroll);
                timings.session.push(session);
            }
            Err(e) => *failures.entry(e).or_default() += 1,
        }
        if last_progress.elapsed() > Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!("… {} of {n} agents connected", enrolled.len());
        }
    }
    (enrolled, timings, failures)
}

async fn fan_out(args: &Args, server: &mut Server, agents: &[Enrolled]) -> anyhow::Result<()> {
    let n = agents.len();
    println!("\n3. fan-out: one replica on each of {n} agents");
    let api = &server.api;
    let body = |name: String, replicas: usize, selector: Value| {
        json!({
            "deploymentName": name,
            "environment": "development",
            "target": { "selector": selector },
            "configuration": { "replicas": replicas, "command": "/bin/sleep", "args": ["3600"] }
        })
    };
    let before = server.usage()?;
    let t0 = Instant::now();
    let (status, res) = api.call(Method::POST, "/v1/deployments", Some(&body("fanout".into(), n, json!({})))).await?;
    // Which deployment each agent should receive, and (deployment id, replicas).
    let mut expect: Vec<String> = Vec::with_capacity(n);
    let mut deployments: Vec<(String, usize)> = Vec::new();
    let t0 = if status == StatusCode::ACCEPTED {
        println!("   POST /v1/deployments (replicas {n}, selector {{}}) answered in {:.1} ms", ms(t0.elapsed()));
        let id = res["deployment"]["id"].as_str().context("deployment id")?.to_string();
        expect.extend(std::iter::repeat_n(id.clone(), n));
        deployments.push((id, n));
        t0
    } else if status == StatusCode::BAD_REQUEST && res["error"]["code"] == "DEPLOY_004" {
        let mut shards: BTreeMap<usize, usize> = BTreeMap::new();
        for a in agents {
            *shards.entry(a.shard).or_default() += 1;
        }
        println!(
            "   the server refuses replicas {n} ({}); fanning out as {} deployments of ≤ {SHARD} replicas, \
             one per bench-shard label, POSTed 8 at a time",
            res["error"]["message"].as_str().unwrap_or("DEPLOY_004"),
            shards.len()
        );
        let t0 = Instant::now();
        let deadline = Duration::from_secs(args.fanout_timeout);
        let ids = match tokio::time::timeout(deadline, post_shards(api, &shards, body)).await {
            Ok(ids) => ids?,
            Err(_) => bail!("the {} fan-out POSTs were not all answered within {deadline:?}", shards.len()),
        };
        println!("   {} POSTs answered in {:.1} ms", ids.len(), ms(t0.elapsed()));
        expect.extend(agents.iter().map(|a| ids[&a.shard].clone()));
        deployments.extend(shards.keys().map(|shard| (ids[shard].clone(), shards[shard])));
        t0
    } else {
        bail!("POST /v1/deployments (replicas {n}): {status} {res}");
    };
    wait_fan_out(args, server, agents, &expect, &deployments, t0, before).await
}

/// POSTs one deployment per shard, 8 at a time; returns shard → deployment id.
async fn post_shards(
    api: &Api,
    shards: &BTreeMap<usize, usize>,
    body: impl Fn(String, usize, Value) -> Value,
) -> anyhow::Result<BTreeMap<usize, String>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for (&shard, &count) in shards {
        let (api, permits) = (api.clone(), permits.clone());
        let body = body(format!("fanout-{shard:04}"), count, json!({ "bench-shard": shard.to_string() }));
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let (status, res) = api.call(Method::POST, "/v1/deployments", Some(&body)).await?;
            if status != StatusCode::ACCEPTED {
                bail!("POST /v1/deployments (shard {shard}): {status} {res}");
            }
            Ok((shard, res["deployment"]["id"].as_str().context("deployment id")?.to_string()))
        });
    }
    let mut ids = BTreeMap::new();
    let mut last_progress = Instant::now();
    while let Some(r) = tasks.join_next().await {
        let (shard, id) = r??;
        ids.insert(shard, id);
        if last_progress.elapsed() > Duration::from_secs(10) {
            last_progress = Instant::now();
            eprintln!("… {} of {} fan-out POSTs answered", ids.len(), shards.len());
        }
    }
    Ok(ids)
}

/// Waits until every agent received and reported its replica, then until every deployment is
/// `running` with all replicas ready; prints the figures, measured from `t0` (server usage
/// from `before`).
async fn wait_fan_out(
    args: &Args,
    server: &mut Server,
    agents: &[Enrolled],
    expect: &[String],
    deployments: &[(String, usize)],
    t0: Instant,
    before: Usage,
) -> anyhow::Result<()> {
    let deadline = t0 + Duration::from_secs(args.fanout_timeout);
    let live: Vec<usize> = (0..agents.len()).filter(|&i| agents[i].agent.ended().is_none()).collect();
    let progress = |at: fn(&SimAgent, &str) -> Option<Instant>| {
        live.iter()
            .filter_map(|&i| at(&agents[i].agent, &expect[i]))
            .map(|t| t.saturating_duration_since(t0))
            .collect::<Vec<_>>()
    };
    let (received, reported) = loop {
        let received = progress(SimAgent::received_at);
        let reported = progress(SimAgent::reported_at);
        if reported.len() == live.len() || Instant::now() >= deadline {
            break (received, reported);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (what, samples) in [("received their workload", &received), ("reported their replica ready", &reported)] {
        match Summary::of(samples) {
            Some(s) => println!(
                "   {:>5} agents {what:<28} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
                s.n,
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            ),
            None => println!("   no agent {what}"),
        }
    }
    if reported.len() < live.len() {
        println!(
            "   after {} s: {} of {} connected agents received, {} reported",
            args.fanout_timeout,
            received.len(),
            live.len(),
            reported.len()
        );
    }
    if live.len() < agents.len() {
        println!("   {} agent(s) had lost their session before the fan-out", agents.len() - live.len());
    }

    // The control plane's view: every deployment running with all replicas ready.
    let mut pending: Vec<&(String, usize)> = deployments.iter().collect();
    let mut last = Value::Null;
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for d in pending {
            let (status, res) = server.api.call(Method::GET, &format!("/v1/deployments/{}", d.0), None).await?;
            let done = status == StatusCode::OK
                && res["status"] == "running"
                && res["replicas"]["ready"].as_u64() == Some(d.1 as u64);
            if !done {
                last = json!({ "id": d.0, "status": res["status"], "replicas": res["replicas"] });
                still.push(d);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let settled = t0.elapsed();
    let after = server.usage()?;
    if pending.is_empty() {
        let ready: usize = deployments.iter().map(|d| d.1).sum();
        println!(
            "   status running with {ready} ready after {:.1} ms (polled every 50 ms); \
             ferry-server CPU {:.0} % of a core meanwhile, RSS {:.0} MiB",
            ms(settled),
            cpu_percent(&before, &after, settled),
            mib(after.rss_kib)
        );
    } else {
        println!(
            "   after {} s, {} deployment(s) not running with every replica ready; last seen: {last}",
            args.fanout_timeout,
            pending.len()
        );
    }
    summarize_sessions(agents);
    server.check_alive()
}

/// How many sessions are still up, and why the others ended.
fn summarize_sessions(agents: &[Enrolled]) {
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    for a in agents {
        if let Some(e) = a.agent.ended() {
            *ended.entry(e).or_default() += 1;
        }
    }
    let lost: usize = ended.values().sum();
    println!("   sessions: {} up, {lost} ended", agents.len() - lost);
    for (e, n) in ended {
        println!("     {n} × {e}");
    }
}
