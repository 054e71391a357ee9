//! Resource quantities, an environment's limits and what deployments hold against them (pure,
//! table-tested; the store applies [`check`] inside the transaction that writes a deployment).
//!
//! * Quantities are written as in Kubernetes: CPU in cores (`"2"`, `"0.5"`) or millicores
//!   (`"250m"`); memory in bytes with an optional binary (`Ki`…`Ei`) or decimal (`k`…`E`)
//!   suffix (`"512Mi"`, `"1G"`, `"1.5Gi"`). Anything else (signs, exponents, spaces, fractions
//!   of a millicore or of a byte) is refused with the field named.
//! * A deployment holds `replicas × request` of CPU and memory and `replicas` pods while it is
//!   running, nothing while it is stopped ([`Allocation`]). Its environment keeps the running
//!   totals ([`Usage`]).
//! * A write that makes something **grow** past a limit is refused ([`Exceeded`]); a write that
//!   shrinks or keeps it passes even above the limit, so lowering a limit below what is allocated
//!   is allowed: what runs keeps running, only growth is refused.

use serde::{Deserialize, Serialize};

use crate::domain::DesiredState;
use crate::model::Configuration;

/// The largest CPU request of one replica: 1,000 cores.
pub const MAX_REPLICA_CPU_MILLIS: i64 = 1_000_000;
/// The largest memory request of one replica: 1 TiB.
pub const MAX_REPLICA_MEMORY_BYTES: i64 = 1 << 40;
/// No total (or limit) may pass this, so sums of totals never overflow: Ferry's own hard cap.
pub const MAX_TOTAL: i64 = 1 << 62;

const BINARY: [(&str, u32); 6] = [("Ki", 1), ("Mi", 2), ("Gi", 3), ("Ti", 4), ("Pi", 5), ("Ei", 6)];
const DECIMAL: [(&str, u32); 6] = [("k", 1), ("M", 2), ("G", 3), ("T", 4), ("P", 5), ("E", 6)];

/// A decimal number without sign or exponent, as `(digits, fraction digits)`: `"1.25"` is
/// `(125, 2)`.
fn decimal(s: &str) -> Option<(i128, u32)> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() || int.len() > 20 || frac.len() > 9 || s.ends_with('.') {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    Some((digits, frac.len() as u32))
}

/// `digits / 10^scale × factor`, if that is a whole number of at most `max`.
fn whole(digits: i128, scale: u32, factor: i128, max: i64) -> Option<i64> {
    let n = digits.checked_mul(factor)?;
    let d = 10_i128.pow(scale);
    if n % d != 0 {
        return None;
    }
    let v = n / d;
    (v <= i128::from(max)).then_some(v as i64)
}

/// CPU in millicores: `"250m"`, `"2"`, `"0.5"` (at most `max` millicores).
pub fn parse_cpu(s: &str, max: i64) -> Result<i64, String> {
    let bad = || {
        format!(
            "invalid CPU quantity {:?}: cores (\"2\", \"0.5\") or millicores (\"250m\"), at most {}",
            truncate(s),
            format_cpu(max)
        )
    };
    let (number, factor) = match s.strip_suffix('m') {
        Some(n) => (n, 1),
        None => (s, 1000),
    };
    let (digits, scale) = decimal(number).ok_or_else(bad)?;
    whole(digits, scale, factor, max).ok_or_else(bad)
}

/// Memory in bytes: `"512Mi"`, `"1G"`, `"1.5Gi"`, `"1048576"` (at most `max` bytes).
pub fn parse_memory(s: &str, max: i64) -> Result<i64, String> {
    let bad = || {
        format!(
            "invalid memory quantity {:?}: bytes with an optional suffix Ki, Mi, Gi, Ti, Pi, Ei (or k, M, G, T, P, \
             E), e.g. \"512Mi\", at most {}",
            truncate(s),
            format_memory(max)
        )
    };
    let binary = BINARY.iter().find_map(|(suffix, p)| s.strip_suffix(suffix).map(|n| (n, 1024_i128.pow(*p))));
    let (number, factor) = binary
        .or_else(|| DECIMAL.iter().find_map(|(suffix, p)| s.strip_suffix(suffix).map(|n| (n, 1000_i128.pow(*p)))))
        .unwrap_or((s, 1));
    let (digits, scale) = decimal(number).ok_or_else(bad)?;
    whole(digits, scale, factor, max).ok_or_else(bad)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `"2"` for whole cores, else `"1500m"`.
pub fn format_cpu(millis: i64) -> String {
    if millis % 1000 == 0 { format!("{}", millis / 1000) } else { format!("{millis}m") }
}

/// The largest binary unit that divides the amount exactly (`"16Gi"`), else bytes.
pub fn format_memory(bytes: i64) -> String {
    if bytes != 0 {
        for (suffix, p) in BINARY.iter().rev() {
            let unit = 1024_i64.pow(*p);
            if bytes % unit == 0 {
                return format!("{}{suffix}", bytes / unit);
            }
        }
    }
    bytes.to_string()
}

/// An environment's limits, as stored (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    /// Replicas of any one deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Replicas of all the environment's running deployments together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<i64>,
}

/// The limits document of the API: `{"cpu": "8", "memory": "16Gi", "replicas": 10, "pods": 50}`,
/// each `null` (or absent) for no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsDoc {
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub replicas: Option<u64>,
    #[serde(default)]
    pub pods: Option<u64>,
}

impl LimitsDoc {
    /// Validates the document (400 naming the field, under `prefix`).
    pub fn compile(&self, prefix: &str) -> Result<Limits, (String, String)> {
        let field = |f: &str| if prefix.is_empty() { f.to_string() } else { format!("{prefix}.{f}") };
        let cpu = self.cpu.as_deref().map(|s| parse_cpu(s, MAX_TOTAL)).transpose().map_err(|m| (field("cpu"), m))?;
        let memory =
            self.memory.as_deref().map(|s| parse_memory(s, MAX_TOTAL)).transpose().map_err(|m| (field("memory"), m))?;
        let max_replicas = u64::from(crate::model::MAX_REPLICAS);
        if self.replicas.is_some_and(|r| r > max_replicas) {
            return Err((
                field("replicas"),
                format!("at most {max_replicas} (Ferry's own limit of replicas per deployment)"),
            ));
        }
        if self.pods.is_some_and(|p| p > MAX_TOTAL as u64) {
            return Err((field("pods"), format!("at most {MAX_TOTAL}")));
        }
        Ok(Limits {
            cpu_millis: cpu,
            memory_bytes: memory,
            replicas: self.replicas.map(|r| r as i64),
            pods: self.pods.map(|p| p as i64),
        })
    }
}

impl Limits {
    pub fn doc(&self) -> LimitsDoc {
        LimitsDoc {
            cpu: self.cpu_millis.map(format_cpu),
            memory: self.memory_bytes.map(format_memory),
            replicas: self.replicas.map(|r| r as u64),
            pods: self.pods.map(|p| p as u64),
        }
    }
}

/// What one deployment holds (and asks for, `replicas`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Configured replicas, running or not (the per-deployment `replicas` limit).
    pub replicas: i64,
    /// Replicas held: `replicas` while running, 0 when stopped.
    pub pods: i64,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl Allocation {
    /// What a deployment with this (validated) configuration holds in this desired state.
    pub fn of(config: &Configuration, state: DesiredState) -> Self {
        let replicas = i64::from(config.replicas);
        let pods = if state == DesiredState::Stopped { 0 } else { replicas };
        let cpu = config.cpu.as_deref().and_then(|s| parse_cpu(s, MAX_REPLICA_CPU_MILLIS).ok()).unwrap_or(0);
        let memory = config.memory.as_deref().and_then(|s| parse_memory(s, MAX_REPLICA_MEMORY_BYTES).ok()).unwrap_or(0);
        Allocation { replicas, pods, cpu_millis: pods * cpu, memory_bytes: pods * memory }
    }

    /// [`Self::of`] a stored configuration document.
    pub fn of_spec(spec: &str, state: DesiredState) -> Result<Self, serde_json::Error> {
        Ok(Self::of(&serde_json::from_str(spec)?, state))
    }
}

/// What an environment's running deployments hold together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub pods: i64,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl Usage {
    /// The totals once `before` is replaced by `after` (either may be nothing: create, delete).
    pub fn moved(&self, before: &Allocation, after: &Allocation) -> Usage {
        Usage {
            pods: self.pods - before.pods + after.pods,
            cpu_millis: self.cpu_millis - before.cpu_millis + after.cpu_millis,
            memory_bytes: self.memory_bytes - before.memory_bytes + after.memory_bytes,
        }
    }
}

/// Which limit a write would pass, with the amounts (CPU in millicores, memory in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// `cpu`, `memory`, `replicas` (per deployment) or `pods` (the environment's total).
    pub limit: &'static str,
    /// The limit's value (Ferry's own [`MAX_TOTAL`] when no limit is set and a total would pass it).
    pub max: i64,
    /// Allocated before the write (for `replicas`: the deployment's replicas before).
    pub allocated: i64,
    /// What the write adds (for `replicas`: the replicas asked for).
    pub requested: i64,
    /// What is left under the limit (for `replicas`: the limit).
    pub available: i64,
}

impl Exceeded {
    /// An amount of this limit's unit, as the API writes it.
    pub fn format(&self, amount: i64) -> serde_json::Value {
        match self.limit {
            "cpu" => format_cpu(amount).into(),
            "memory" => format_memory(amount).into(),
            _ => amount.into(),
        }
    }
}

/// Whether replacing `before` by `after` in an environment whose totals are `usage` stays within
/// `limits`: every amount that grows must stay within its limit (and within [`MAX_TOTAL`]).
/// Returns the new totals.
pub fn check(limits: &Limits, usage: &Usage, before: &Allocation, after: &Allocation) -> Result<Usage, Exceeded> {
    if let Some(max) = limits.replicas
        && after.replicas > before.replicas
        && after.replicas > max
    {
        return Err(Exceeded {
            limit: "replicas",
            max,
            allocated: before.replicas,
            requested: after.replicas,
            available: max,
        });
    }
    let next = usage.moved(before, after);
    for (limit, max, was, now) in [
        ("pods", limits.pods, usage.pods, next.pods),
        ("cpu", limits.cpu_millis, usage.cpu_millis, next.cpu_millis),
        ("memory", limits.memory_bytes, usage.memory_bytes, next.memory_bytes),
    ] {
        let max = max.unwrap_or(MAX_TOTAL).min(MAX_TOTAL);
        if now > was && now > max {
            return Err(Exceeded { limit, max, allocated: was, requested: now - was, available: (max - was).max(0) });
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        for (s, m) in
            [("250m", 250), ("2", 2000), ("0.5", 500), ("1.25", 1250), ("0", 0), ("8000m", 8000), ("0.001", 1)]
        {
            assert_eq!(parse_cpu(s, MAX_TOTAL), Ok(m), "{s}");
        }
        for s in ["", "m", "-1", "+1", "1.", ".5", "1e3", " 1", "1 ", "0.0005", "1.5m", "2 cores", "1Ki", "１", "0x10"]
        {
            assert!(parse_cpu(s, MAX_TOTAL).is_err(), "{s:?}");
        }
        assert!(parse_cpu("1001", MAX_REPLICA_CPU_MILLIS).is_err());
        assert_eq!(parse_cpu("1000", MAX_REPLICA_CPU_MILLIS), Ok(1_000_000));
        assert!(parse_cpu(&"9".repeat(40), MAX_TOTAL).is_err(), "no overflow panic");
        assert!(parse_cpu("99999999999999999999", MAX_TOTAL).is_err());
    }

    #[test]
    fn memory_quantities() {
        for (s, b) in [
            ("1", 1),
            ("512Mi", 512 << 20),
            ("4Gi", 4 << 30),
            ("1Ti", 1 << 40),
            ("1.5Gi", 3 << 29),
            ("1k", 1000),
            ("1M", 1_000_000),
            ("2G", 2_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1Ki", 1024),
            ("0", 0),
        ] {
            assert_eq!(parse_memory(s, MAX_TOTAL), Ok(b), "{s}");
        }
        for s in ["", "Gi", "-1Gi", "1.5", "0.1Ki", "1GB", "1gi", "1 Gi", "1e9", "1m", "1K", "4 TB"] {
            assert!(parse_memory(s, MAX_TOTAL).is_err(), "{s:?}");
        }
        assert!(parse_memory("2Ti", MAX_REPLICA_MEMORY_BYTES).is_err());
        assert!(parse_memory("8Ei", MAX_TOTAL).is_err(), "past Ferry's cap, not an overflow");
    }

    #[test]
    fn quantities_format_back() {
        assert_eq!((format_cpu(8000), format_cpu(1500), format_cpu(0)), ("8".into(), "1500m".into(), "0".into()));
        assert_eq!(format_memory(16 << 30), "16Gi");
        assert_eq!(format_memory(1536 << 20), "1536Mi");
        assert_eq!(format_memory(1000), "1000");
        assert_eq!(format_memory(0), "0");
        for s in ["250m", "3", "512Mi", "1Ti"] {
            let again = if s.ends_with('i') {
                format_memory(parse_memory(s, MAX_TOTAL).unwrap())
            } else {
                format_cpu(parse_cpu(s, MAX_TOTAL).unwrap())
            };
            assert_eq!(again, s);
        }
    }

    #[test]
    fn limits_documents_validate() {
        let doc = LimitsDoc { cpu: Some("8".into()), memory: Some("16Gi".into()), replicas: Some(5), pods: Some(20) };
        let l = doc.compile("").unwrap();
        assert_eq!(
            l,
            Limits { cpu_millis: Some(8000), memory_bytes: Some(16 << 30), replicas: Some(5), pods: Some(20) }
        );
        assert_eq!(l.doc(), doc);
        assert_eq!(LimitsDoc::default().compile("").unwrap(), Limits::default());
        let bad = LimitsDoc { memory: Some("lots".into()), ..Default::default() };
        assert_eq!(bad.compile("limits").unwrap_err().0, "limits.memory");
        let bad = LimitsDoc { replicas: Some(10_001), ..Default::default() };
        assert_eq!(bad.compile("").unwrap_err().0, "replicas");
    }

    fn config(replicas: u32, cpu: Option<&str>, memory: Option<&str>) -> Configuration {
        let mut c: Configuration =
            serde_json::from_value(serde_json::json!({ "replicas": replicas, "command": "x" })).unwrap();
        c.cpu = cpu.map(str::to_string);
        c.memory = memory.map(str::to_string);
        c
    }

    #[test]
    fn a_deployment_holds_replicas_times_requests_while_running() {
        let c = config(3, Some("500m"), Some("1Gi"));
        assert_eq!(
            Allocation::of(&c, DesiredState::Running),
            Allocation { replicas: 3, pods: 3, cpu_millis: 1500, memory_bytes: 3 << 30 }
        );
        assert_eq!(
            Allocation::of(&c, DesiredState::Stopped),
            Allocation { replicas: 3, pods: 0, cpu_millis: 0, memory_bytes: 0 }
        );
        let plain = config(2, None, None);
        assert_eq!(
            Allocation::of(&plain, DesiredState::Running),
            Allocation { replicas: 2, pods: 2, cpu_millis: 0, memory_bytes: 0 }
        );
        let spec = serde_json::to_string(&c).unwrap();
        assert_eq!(Allocation::of_spec(&spec, DesiredState::Running).unwrap().cpu_millis, 1500);
    }

    #[test]
    fn only_growth_past_a_limit_is_refused() {
        let limits = Limits { cpu_millis: Some(4000), memory_bytes: None, replicas: Some(5), pods: Some(10) };
        let usage = Usage { pods: 8, cpu_millis: 3000, memory_bytes: 0 };
        let none = Allocation::default();
        let a = |replicas, pods, cpu| Allocation { replicas, pods, cpu_millis: cpu, memory_bytes: 0 };
        // A create within every limit.
        assert_eq!(
            check(&limits, &usage, &none, &a(2, 2, 1000)),
            Ok(Usage { pods: 10, cpu_millis: 4000, memory_bytes: 0 })
        );
        // One pod too many: named with the amounts.
        assert_eq!(
            check(&limits, &usage, &none, &a(3, 3, 0)),
            Err(Exceeded { limit: "pods", max: 10, allocated: 8, requested: 3, available: 2 })
        );
        assert_eq!(check(&limits, &usage, &none, &a(1, 1, 1500)).unwrap_err().limit, "cpu");
        // Per deployment: replicas past the limit, even while stopped.
        assert_eq!(
            check(&limits, &usage, &none, &a(6, 0, 0)),
            Err(Exceeded { limit: "replicas", max: 5, allocated: 0, requested: 6, available: 5 })
        );
        // Above the limits already (a limit was lowered): shrinking or standing still passes,
        // growing does not.
        let over = Usage { pods: 12, cpu_millis: 5000, memory_bytes: 0 };
        assert!(check(&limits, &over, &a(7, 7, 0), &a(6, 6, 0)).is_ok(), "scale down");
        assert!(check(&limits, &over, &a(7, 7, 0), &a(7, 7, 0)).is_ok(), "unchanged (e.g. a new version)");
        assert!(check(&limits, &over, &a(7, 7, 0), &a(7, 0, 0)).is_ok(), "stop");
        assert!(check(&limits, &over, &a(7, 7, 0), none_after()).is_ok(), "delete");
        assert_eq!(check(&limits, &over, &a(7, 0, 0), &a(7, 7, 0)).unwrap_err().limit, "pods", "start");
        assert_eq!(check(&limits, &over, &a(7, 7, 0), &a(7, 7, 1)).unwrap_err().available, 0);
        // No limits: only Ferry's own cap.
        let huge = Usage { pods: 0, cpu_millis: 0, memory_bytes: MAX_TOTAL - 1 };
        let big = Allocation { replicas: 1, pods: 1, cpu_millis: 0, memory_bytes: 2 };
        assert_eq!(check(&Limits::default(), &huge, &none, &big).unwrap_err().max, MAX_TOTAL);
    }

    fn none_after() -> &'static Allocation {
        &Allocation { replicas: 0, pods: 0, cpu_millis: 0, memory_bytes: 0 }
    }
}
