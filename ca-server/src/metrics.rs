//! Prometheus counters and a latency histogram, rendered as text at `GET /metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Process-wide metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    issued: Mutex<BTreeMap<String, u64>>,
    refusals: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Histogram>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_insert(0) += 1;
    }
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_insert(0) += 1;
        }
        if let Ok(mut h) = self.latency.lock() {
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        }
    }

    pub fn issued(&self, kind: &str) {
        bump(&self.issued, kind.to_string());
    }

    pub fn refused(&self, reason: &str) {
        bump(&self.refusals, reason.to_string());
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP pedm_http_requests_total HTTP requests by route and status.\n# TYPE pedm_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                out.push_str(&format!(
                    "pedm_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP pedm_certificates_issued_total Certificates issued by kind.\n# TYPE pedm_certificates_issued_total counter\n");
        if let Ok(m) = self.issued.lock() {
            for (kind, n) in m.iter() {
                out.push_str(&format!(
                    "pedm_certificates_issued_total{{kind=\"{kind}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP pedm_refusals_total Refused requests by reason.\n# TYPE pedm_refusals_total counter\n");
        if let Ok(m) = self.refusals.lock() {
            for (reason, n) in m.iter() {
                out.push_str(&format!("pedm_refusals_total{{reason=\"{reason}\"}} {n}\n"));
            }
        }
        out.push_str("# HELP pedm_http_request_duration_seconds Request latency.\n# TYPE pedm_http_request_duration_seconds histogram\n");
        if let Ok(h) = self.latency.lock() {
            for (i, b) in BUCKETS.iter().enumerate() {
                out.push_str(&format!(
                    "pedm_http_request_duration_seconds_bucket{{le=\"{b}\"}} {}\n",
                    h.counts[i]
                ));
            }
            out.push_str(&format!(
                "pedm_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n",
                h.count
            ));
            out.push_str(&format!(
                "pedm_http_request_duration_seconds_sum {}\n",
                h.sum
            ));
            out.push_str(&format!(
                "pedm_http_request_duration_seconds_count {}\n",
                h.count
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request("/v1/certs", 200, 0.002);
        m.request("/v1/certs", 200, 0.3);
        m.request("/v1/certs", 401, 0.0001);
        m.issued("base");
        m.refused("no-role");
        let text = m.render();
        assert!(text.contains("pedm_http_requests_total{route=\"/v1/certs\",status=\"200\"} 2\n"));
        assert!(text.contains("pedm_http_requests_total{route=\"/v1/certs\",status=\"401\"} 1\n"));
        assert!(text.contains("pedm_certificates_issued_total{kind=\"base\"} 1\n"));
        assert!(text.contains("pedm_refusals_total{reason=\"no-role\"} 1\n"));
        assert!(text.contains("pedm_http_request_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("pedm_http_request_duration_seconds_bucket{le=\"0.0025\"} 2\n"));
        assert!(text.contains("pedm_http_request_duration_seconds_bucket{le=\"0.5\"} 3\n"));
        assert!(text.contains("pedm_http_request_duration_seconds_count 3\n"));
    }
}
