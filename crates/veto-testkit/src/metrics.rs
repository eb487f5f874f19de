//! Prometheus text (`GET /metrics`) from the registry or the proxy.

/// The value of one series (`name` or `name{labels}`) in Prometheus text;
/// 0 when absent. Panics on a value that is not a number.
#[expect(clippy::panic, reason = "a test kit: the test fails at this step")]
pub fn metric_value(text: &str, series: &str) -> f64 {
    series_text(text, series)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("metric `{series}` value `{v}`: {e}"))
        })
        .unwrap_or(0.0)
}

/// The value text of one series (`name` or `name{labels}`).
fn series_text<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(str::trim)
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Metrics {
    text: String,
}

/// One histogram: cumulative buckets `(le, count)`, sum and count.
#[derive(Debug, Clone)]
pub struct Histogram {
    /// The sum of the observations.
    pub sum: f64,
    /// How many observations.
    pub count: f64,
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// Mean observation (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// Adds another histogram of the same metric (same buckets), such as
    /// another replica's.
    pub fn add(&mut self, other: &Histogram) {
        self.sum += other.sum;
        self.count += other.count;
        for (b, (_, c)) in self.buckets.iter_mut().zip(&other.buckets) {
            b.1 += c;
        }
    }

    /// The upper bound of the bucket holding quantile `q` (bucket resolution).
    pub fn quantile_le(&self, q: f64) -> f64 {
        let want = q * self.count;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map_or(f64::INFINITY, |(le, _)| *le)
    }
}

impl Metrics {
    /// Wraps exposition text.
    pub fn parse(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    /// `GET {base}/metrics`.
    pub async fn fetch(client: &reqwest::Client, base: &str) -> reqwest::Result<Self> {
        let text = client
            .get(format!("{base}{}", veto_core::wire::path::METRICS))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Self::parse(text))
    }

    /// A sample without labels (`name value`).
    pub fn value(&self, name: &str) -> Option<f64> {
        self.text.lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// One series (`name` or `name{labels}`); `None` when absent or not a number.
    pub fn series(&self, series: &str) -> Option<f64> {
        series_text(&self.text, series).and_then(|v| v.parse().ok())
    }

    /// The sum of every series of `name`, whatever its labels (0 when a
    /// labelled family has no series yet).
    pub fn sum(&self, name: &str) -> Option<f64> {
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

    /// The histogram `name` (its `_sum`, `_count` and `_bucket` series).
    pub fn histogram(&self, name: &str) -> Option<Histogram> {
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
    fn parses_histogram() -> Result<(), String> {
        let m = Metrics::parse(
            "# HELP x\nveto_registry_version 5\nh_sum 3.0\nh_count 4\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"2.0\"} 3\nh_bucket{le=\"+Inf\"} 4\n",
        );
        assert_eq!(m.value("veto_registry_version"), Some(5.0));
        let h = m.histogram("h").ok_or("no histogram")?;
        assert_eq!(h.mean(), 0.75);
        assert_eq!(h.quantile_le(0.5), 2.0);
        assert_eq!(h.quantile_le(0.99), f64::INFINITY);
        Ok(())
    }

    #[test]
    fn series_with_labels() {
        let text = "a{k=\"v\"} 2\na 1\nab 7\n";
        assert_eq!(metric_value(text, "a"), 1.0);
        assert_eq!(metric_value(text, "a{k=\"v\"}"), 2.0);
        assert_eq!(metric_value(text, "b"), 0.0);
        assert_eq!(Metrics::parse(text).series("ab"), Some(7.0));
    }
}
