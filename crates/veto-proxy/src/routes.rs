//! Route files: map a request to an action other than `http:METHOD:PATH`.
//!
//! One rule per line, first match wins, `#` starts a comment:
//! `METHOD PATH ACTION`, where METHOD may be `*` and PATH may end with `*`
//! (a prefix). Requests no rule matches use `http:METHOD:PATH`.
//!
//! Rules match the canonical path ([`veto_core::Target`]), never the raw
//! one, so `/v1/./orders/7`, `/v1/%6Frders/7` and `/v1/x/../orders/7` all
//! meet the `/v1/orders/*` rules. A rule path must itself be written in
//! canonical form; the file is refused otherwise.
//!
//! ```text
//! GET  /v1/orders/*  orders:read
//! *    /v1/orders/*  orders:write
//! ```

use http::Method;

/// Why a route file was refused.
#[derive(Debug, thiserror::Error)]
#[error("route file line {line}: {message}")]
pub struct RouteError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Clone, Debug)]
struct Rule {
    method: Option<Method>,
    path: String,
    prefix: bool,
    action: String,
}

/// Parsed routes.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    rules: Vec<Rule>,
}

impl Routes {
    /// Parses a route file's text.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: String| RouteError {
                line: i + 1,
                message,
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [method, path, action] = parts[..] else {
                return Err(err(format!(
                    "expected `METHOD PATH ACTION`, found `{line}`"
                )));
            };
            let method = match method {
                "*" => None,
                m if veto_core::check_method(m).is_err() => {
                    return Err(err(format!(
                    "method `{m}` must be uppercase (requests with lowercase methods are refused)"
                )))
                }
                m => Some(
                    Method::from_bytes(m.as_bytes())
                        .map_err(|_| err(format!("invalid method `{m}`")))?,
                ),
            };
            if !path.starts_with('/') {
                return Err(err(format!("path `{path}` must start with `/`")));
            }
            veto_core::Pattern::parse(action).map_err(|e| err(e.to_string()))?;
            let (path, prefix) = match path.strip_suffix('*') {
                Some(p) => (p.to_owned(), true),
                None => (path.to_owned(), false),
            };
            match veto_core::canonical_path(&path) {
                Ok(c) if c == path => {}
                Ok(c) => {
                    return Err(err(format!(
                        "path `{path}` is not in canonical form: requests are matched as `{c}`, write that"
                    )))
                }
                Err(e) => return Err(err(format!("path `{path}`: {e}"))),
            }
            rules.push(Rule {
                method,
                path,
                prefix,
                action: action.to_owned(),
            });
        }
        Ok(Self { rules })
    }

    /// The action for a request; `path` is the canonical path
    /// ([`veto_authorizer::request_target`]).
    ///
    /// Rules protect: a request a rule was meant for must not slip past it
    /// to the default action, whatever the upstream's habits. So a `GET`
    /// rule also covers `HEAD` (servers answer `HEAD` with their `GET`
    /// handler), and paths match ignoring ASCII case (Express and ASP.NET
    /// route `/ADMIN` to `/admin`).
    pub fn action(&self, method: &Method, path: &str) -> String {
        let p = path.as_bytes();
        for r in &self.rules {
            let method_ok = r
                .method
                .as_ref()
                .is_none_or(|m| m == method || (*m == Method::GET && method == Method::HEAD));
            let rule = r.path.as_bytes();
            let path_ok = if r.prefix {
                p.len() >= rule.len() && p[..rule.len()].eq_ignore_ascii_case(rule)
            } else {
                p.eq_ignore_ascii_case(rule)
            };
            if method_ok && path_ok {
                return r.action.clone();
            }
        }
        veto_authorizer::action_for(method, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_and_default_applies() {
        let r =
            Routes::parse("GET /v1/orders/* orders:read\n* /v1/orders/* orders:write # all else\n")
                .unwrap();
        assert_eq!(r.action(&Method::GET, "/v1/orders/7"), "orders:read");
        assert_eq!(r.action(&Method::POST, "/v1/orders/7"), "orders:write");
        assert_eq!(r.action(&Method::GET, "/health"), "http:GET:/health");
        assert!(Routes::parse("GET orders x").is_err());
        assert!(Routes::parse("GET /x").is_err());
        assert!(Routes::parse("get /x y").is_err());
    }

    /// A rule is not dodged by `HEAD` for `GET` or by the path's case.
    #[test]
    fn rules_cover_head_and_every_case() {
        let r = Routes::parse("GET /orders/secret* orders:secret\n* /admin* admin:all\n").unwrap();
        assert_eq!(r.action(&Method::HEAD, "/orders/secret"), "orders:secret");
        assert_eq!(r.action(&Method::GET, "/Orders/SECRET/1"), "orders:secret");
        assert_eq!(
            r.action(&Method::POST, "/orders/secret"),
            "http:POST:/orders/secret"
        );
        for path in ["/ADMIN", "/Admin/users", "/aDmIn"] {
            assert_eq!(r.action(&Method::GET, path), "admin:all", "{path}");
        }
        assert_eq!(r.action(&Method::GET, "/adm"), "http:GET:/adm");
    }

    #[test]
    fn rule_paths_must_be_canonical() {
        for bad in [
            "GET /a/../admin* x",
            "GET /%61dmin* x",
            "GET /a//b x",
            "GET /a%2Fb x",
            "GET /a;b x",
        ] {
            let e = Routes::parse(bad).err().map(|e| e.to_string());
            assert!(
                e.as_ref().is_some_and(|e| e.contains("path")),
                "{bad}: {e:?}"
            );
        }
        assert!(Routes::parse("GET /admin/ x\n* /a%3Ab* y").is_ok());
    }
}
