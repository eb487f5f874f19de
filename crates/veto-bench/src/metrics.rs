//! Reads Prometheus text (`GET /metrics`) from the registry or the proxy.

/// A parsed exposition.
pub(crate) struct Metrics {
    text: String,
}

/// One histogram: cumulative buckets `(le, count)`, sum and count.
pub(crate) struct Histogram {
    pub sum: f64,
    pub count: f64,
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// Mean observation (NaN when empty).
    pub(crate) fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// Adds another histogram of the same metric (same buckets), such as
    /// another replica's.
    pub(crate) fn add(&mut self, other: &Histogram) {
        self.sum += other.sum;
        self.count += other.count;
        for (b, (_, c)) in self.buckets.iter_mut().zip(&other.buckets) {
            b.1 += c;
        }
    }

    /// The upper bound of the bucket holding quantile `q` (bucket resolution).
    pub(crate) fn quantile_le(&self, q: f64) -> f64 {
        let want = q * self.count;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map_or(f64::INFINITY, |(le, _)| *le)
    }
}

impl Metrics {
    pub(crate) async fn fetch(client: &reqwest::Client, base: &str) -> anyhow::Result<Self> {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Self { text })
    }

    /// A sample without labels (`name value`).
    pub(crate) fn value(&self, name: &str) -> Option<f64> {
        self.text.lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// The sum of every series of `name`, whatever its labels (0 when a
    /// labelled family has no series yet).
    pub(crate) fn sum(&self, name: &str) -> Option<f64> {
        Some(
            self.text
                .lines()
                .filter_map(|l| {
                    let (series, v) = l.rsplit_once(' ')?;
                    let n = series.split('{').next()?;
                    (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
                })
                .sum(),
        )
    }

    pub(crate) fn histogram(&self, name: &str) -> Option<Histogram> {
        let sum = self.value(&format!("{name}_sum"))?;
        let count = self.value(&format!("{name}_count"))?;
        let prefix = format!("{name}_bucket{{le=\"");
        let buckets = self
            .text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, rest) = rest.split_once('"')?;
                let count: f64 = rest.rsplit(' ').next()?.trim().parse().ok()?;
                let le = le.parse().unwrap_or(f64::INFINITY);
                Some((le, count))
            })
            .collect();
        Some(Histogram {
            sum,
            count,
            buckets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_histogram() -> anyhow::Result<()> {
        let m = Metrics {
            text: "# HELP x\nveto_registry_version 5\nh_sum 3.0\nh_count 4\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"2.0\"} 3\nh_bucket{le=\"+Inf\"} 4\n"
                .into(),
        };
        assert_eq!(m.value("veto_registry_version"), Some(5.0));
        let h = m
            .histogram("h")
            .ok_or_else(|| anyhow::anyhow!("no histogram"))?;
        assert_eq!(h.mean(), 0.75);
        assert_eq!(h.quantile_le(0.5), 2.0);
        assert_eq!(h.quantile_le(0.99), f64::INFINITY);
        Ok(())
    }
}
