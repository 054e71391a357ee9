//! `ferry-bench writes`: does creating a deployment stay as fast with 10,000 stored as with 100?
//!
//! A `ferry-server` child process (release build; SQLite, or a fresh PostgreSQL schema with
//! `--database-url`), one simulated agent (`ferry_tests::sim`, protocol 2, `runtime:process`)
//! that every deployment targets by id, and `--concurrency` clients that POST trivial deployments
//! (`/bin/sleep 3600`, 1 replica) until `--count` exist. Deployment number `i` is created while
//! about `i` exist, so POST latencies are grouped in buckets of `--bucket` by `i`. List latency
//! (`GET /v1/deployments?page=K&pageSize=100`, random K, one call at a time) is measured at 100
//! stored and again at `--count` stored; the pages asked for are printed with the figures.
//!
//! After the first 100 POSTs the tool waits until the agent holds those 100 workloads, so that a
//! deployment that is not placed on it (e.g. a runtime it does not advertise) stops the run at
//! once instead of after `--count` POSTs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_tests::sim::{self, SimAgent};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::server::{self, Api, Server, Usage, mib};
use crate::stats::{Rng, Summary, ms, ratio};

/// Stored deployments at the first list measurement.
const LIST_SMALL: usize = 100;
const PAGE_SIZE: u64 = 100;
/// How long the agent may take to hold the first deployments' workloads.
const PLACED_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to hold every workload after the last POST.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of `ferry-bench writes`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Deployments to create.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    count: u64,
    /// Concurrent POST clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Deployments per latency bucket.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    bucket: u64,
    /// GET calls per list measurement.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    list_calls: u64,
    /// postgres://… to benchmark PostgreSQL (a fresh schema, dropped afterwards) instead of SQLite.
    #[arg(long)]
    database_url: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let opts = server::Options { database_url: args.database_url.clone(), heartbeat_interval: None };
    let mut server = Server::start(&opts).await?;
    let result = tokio::select! {
        r = measure(&args, &mut server) => r,
        e = crate::interrupted() => Err(e),
    };
    server.print_log_tail();
    server.stop().await;
    result
}

/// One POST's outcome: the deployment's index and its latency, or what went wrong.
type Post = (usize, Result<Duration, String>);

async fn measure(args: &Args, server: &mut Server) -> anyhow::Result<()> {
    let count = args.count as usize;
    let backend = if args.database_url.is_some() { "PostgreSQL" } else { "SQLite" };
    println!(
        "writes: {count} deployments, {} concurrent clients, {backend}, ferry-server pid {}",
        args.concurrency,
        server.pid()
    );

    let api = server.api.clone();
    let endpoints = sim::Endpoints::new(server.quic_addr, 1, 1)?;
    let token = api.token(&json!({})).await?;
    let identity = sim::enroll(endpoints.for_agent(0), server.quic_addr, &token, "bench-writes")
        .await
        .map_err(anyhow::Error::msg)?;
    let agent = SimAgent::start(endpoints.for_agent(0).clone(), server.quic_addr, identity, "bench-writes".into());
    agent.wait_connected(Duration::from_secs(30)).await.map_err(anyhow::Error::msg).context("simulated agent")?;

    let protocol = agent.with_state(|s| s.protocol).map_or("?".into(), |p| p.to_string());
    println!("simulated agent {} connected (protocol {protocol}, runtime:process)", agent.agent_id);

    let started = Instant::now();
    let mut posts = Vec::with_capacity(count);
    posts.extend(create(&api, &agent.agent_id, 0, count.min(LIST_SMALL), args.concurrency as usize).await);
    let first = posts.iter().filter(|(_, r)| r.is_ok()).count();
    let pause = Instant::now();
    if holds(&agent, first, PLACED_TIMEOUT).await.is_none() {
        let held = agent.with_state(|s| s.workloads.len());
        bail!(
            "the simulated agent holds {held} of the first {first} deployments' workloads after {PLACED_TIMEOUT:?}{}:              the control plane does not place them on it",
            agent.ended().map(|e| format!(" (its session ended: {e})")).unwrap_or_default()
        );
    }
    let list_small = list_latency(&api, count.min(LIST_SMALL), args.list_calls).await?;
    // Neither the wait nor the list calls count towards the POST rate.
    let paused = pause.elapsed();
    if count > LIST_SMALL {
        posts.extend(create(&api, &agent.agent_id, LIST_SMALL, count, args.concurrency as usize).await);
    }
    let elapsed = started.elapsed() - paused;
    server.check_alive()?;

    // The control plane has answered every POST; how long until the agent holds everything?
    // (Measured before the list calls, which then run against a settled control plane.)
    let accepted = posts.iter().filter(|(_, r)| r.is_ok()).count();
    let caught_up = holds(&agent, accepted, CATCH_UP_TIMEOUT).await;
    let list_large = list_latency(&api, count, args.list_calls).await?;

    report(args, &posts, elapsed)?;
    println!("\nGET /v1/deployments?page=K&pageSize={PAGE_SIZE} (random K, {} sequential calls)", args.list_calls);
    println!("{:>10}  {:>9}  {:>9}  {:>9}", "stored", "p50 ms", "p99 ms", "max ms");
    let lists = [(count.min(LIST_SMALL), &list_small), (count, &list_large)];
    for (stored, l) in lists {
        let s = &l.summary;
        println!("{stored:>10}  {:>9.2}  {:>9.2}  {:>9.2}", ms(s.p50), ms(s.p99), ms(s.max));
    }
    println!(
        "list ratio {count} / {} stored: p50 {:.2}x, p99 {:.2}x",
        count.min(LIST_SMALL),
        ratio(list_large.summary.p50, list_small.summary.p50),
        ratio(list_large.summary.p99, list_small.summary.p99)
    );
    for (stored, l) in lists {
        println!("pages asked at {stored} stored (K × calls): {}", pages_used(&l.pages));
        for problem in l.problems.iter().take(5) {
            println!("  unexpected page: {problem}");
        }
        if l.problems.len() > 5 {
            println!("  … and {} more unexpected pages", l.problems.len() - 5);
        }
    }

    let (protocol, generation, held, counters) = agent.with_state(|s| {
        (
            s.protocol,
            s.workloads.generation(),
            s.workloads.len(),
            [s.updates_applied, s.full_updates_applied, s.updates_stale, s.need_full_sent, s.statuses_sent],
        )
    });
    let [applied, whole, stale, need_full, statuses] = counters;
    let encoded = agent.with_state(|s| s.workloads.status_encodings());
    match caught_up {
        Some(d) => println!(
            "\nagent: holds {held} workloads at generation {generation}; caught up {:.0} ms after the last POST",
            ms(d)
        ),
        None => println!(
            "\nagent: holds {held} of {accepted} workloads at generation {generation} after {CATCH_UP_TIMEOUT:?}{}",
            agent.ended().map(|e| format!("; its session ended: {e}")).unwrap_or_default()
        ),
    }
    println!(
        "agent: protocol {}, {applied} intent updates applied ({whole} whole), {stale} stale, \
         {need_full} answered NeedFull; {statuses} status reports ({encoded} encoded)",
        protocol.map_or("?".into(), |p| p.to_string())
    );
    let usage = server.usage()?;
    let own = Usage::own()?;
    println!(
        "ferry-server: {:.1} s CPU in total, RSS {:.0} MiB (peak {:.0} MiB); ferry-bench: {:.1} s CPU",
        usage.cpu.as_secs_f64(),
        mib(usage.rss_kib),
        mib(usage.hwm_kib),
        own.cpu.as_secs_f64()
    );
    agent.stop().await;
    Ok(())
}

/// POSTs deployments `from..to` from `clients` concurrent clients; returns every outcome.
async fn create(api: &Api, agent_id: &str, from: usize, to: usize, clients: usize) -> Vec<Post> {
    let next = Arc::new(AtomicUsize::new(from));
    let progress = tokio::spawn({
        let next = next.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("… {} of {to} deployments posted", next.load(Ordering::Relaxed).min(to));
            }
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (api, next, agent_id) = (api.clone(), next.clone(), agent_id.to_string());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return out;
                }
                let body = json!({
                    "deploymentName": format!("bench-{i:06}"),
                    "environment": "development",
                    "target": { "agentIds": [agent_id] },
                    "configuration": { "replicas": 1, "command": "/bin/sleep", "args": ["3600"] }
                });
                let t0 = Instant::now();
                let r = match api.call(Method::POST, "/v1/deployments", Some(&body)).await {
                    Ok((StatusCode::ACCEPTED, _)) => Ok(t0.elapsed()),
                    Ok((status, res)) => Err(format!("{status} {}", res["error"]["code"].as_str().unwrap_or("?"))),
                    Err(e) => Err(format!("{e:#}")),
                };
                out.push((i, r));
            }
        });
    }
    let mut posts = Vec::with_capacity(to - from);
    while let Some(r) = tasks.join_next().await {
        posts.extend(r.expect("POST client"));
    }
    progress.abort();
    posts
}

/// Waits until `agent` holds at least `n` workloads; how long that took, or `None` after
/// `timeout` or if its session ended.
async fn holds(agent: &SimAgent, n: usize, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if agent.with_state(|s| s.workloads.len()) >= n {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > timeout || agent.ended().is_some() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One list measurement: latencies, the page numbers asked for, and pages whose content did not
/// match the `totalCount` they reported.
struct Listing {
    summary: Summary,
    pages: Vec<u64>,
    problems: Vec<String>,
}

/// `calls` sequential list calls on random pages of `stored` deployments.
async fn list_latency(api: &Api, stored: usize, calls: u64) -> anyhow::Result<Listing> {
    let page_count = (stored as u64).div_ceil(PAGE_SIZE).max(1);
    let mut rng = Rng::from_time();
    let mut samples = Vec::with_capacity(calls as usize);
    let mut pages = Vec::with_capacity(calls as usize);
    let mut problems = Vec::new();
    for _ in 0..calls {
        let page = rng.one_to(page_count);
        let path = format!("/v1/deployments?page={page}&pageSize={PAGE_SIZE}");
        let t0 = Instant::now();
        let (status, res) = api.call(Method::GET, &path, None).await?;
        samples.push(t0.elapsed());
        pages.push(page);
        if status != StatusCode::OK {
            bail!("GET {path}: {status} {res}");
        }
        let rows = res["data"].as_array().map_or(0, Vec::len) as u64;
        let total = res["pagination"]["totalCount"].as_u64().unwrap_or(0);
        let expected = total.saturating_sub((page - 1) * PAGE_SIZE).min(PAGE_SIZE);
        if rows != expected || total != stored as u64 {
            problems
                .push(format!("page {page}: {rows} rows, totalCount {total} (expected {expected} rows of {stored})"));
        }
    }
    let summary = Summary::of(&samples).expect("at least one call");
    Ok(Listing { summary, pages, problems })
}

/// Page numbers in order, a repeated one as `K×n`: `1×3, 4, 9×2`.
fn pages_used(pages: &[u64]) -> String {
    let mut counted: std::collections::BTreeMap<u64, usize> = Default::default();
    for &p in pages {
        *counted.entry(p).or_default() += 1;
    }
    let parts: Vec<String> =
        counted.iter().map(|(p, n)| if *n == 1 { p.to_string() } else { format!("{p}×{n}") }).collect();
    parts.join(", ")
}

fn report(args: &Args, posts: &[Post], elapsed: Duration) -> anyhow::Result<()> {
    let bucket = args.bucket as usize;
    let count = args.count as usize;
    let buckets = count.div_ceil(bucket);
    let mut by_bucket: Vec<Vec<Duration>> = vec![Vec::new(); buckets];
    let mut errors: std::collections::BTreeMap<&str, usize> = Default::default();
    for (i, r) in posts {
        match r {
            Ok(d) => by_bucket[i / bucket].push(*d),
            Err(e) => *errors.entry(e.as_str()).or_default() += 1,
        }
    }
    let ok = posts.len() - errors.values().sum::<usize>();
    println!(
        "\nPOST /v1/deployments: {ok} accepted in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64()
    );
    for (e, n) in &errors {
        println!("  {n} failed: {e}");
    }
    println!("{:>16}  {:>5}  {:>9}  {:>9}  {:>9}", "existing", "n", "p50 ms", "p99 ms", "max ms");
    let summaries: Vec<Option<Summary>> = by_bucket.iter().map(|b| Summary::of(b)).collect();
    for (b, s) in summaries.iter().enumerate() {
        if !(b == 0 || (b + 1) % 10 == 0 || b + 1 == buckets) {
            continue;
        }
        let range = format!("{}–{}", b * bucket, ((b + 1) * bucket).min(count));
        match s {
            Some(s) => {
                println!("{range:>16}  {:>5}  {:>9.2}  {:>9.2}  {:>9.2}", s.n, ms(s.p50), ms(s.p99), ms(s.max))
            }
            None => println!("{range:>16}  {:>5}  (every POST failed)", 0),
        }
    }
    match (summaries.first().copied().flatten(), summaries.last().copied().flatten()) {
        (Some(first), Some(last)) if buckets > 1 => println!(
            "p99 ratio last / first bucket: {:.2}x (p50 {:.2}x)",
            ratio(last.p99, first.p99),
            ratio(last.p50, first.p50)
        ),
        _ => println!("p99 ratio last / first bucket: n/a (one bucket, or a bucket without successes)"),
    }
    if ok == 0 {
        bail!("no deployment was created");
    }
    Ok(())
}
