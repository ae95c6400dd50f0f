use http::{HeaderMap, HeaderName, StatusCode};
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{
    Classifier, Outcome, Processed, RequestView, Verdict, classify_error, parse_retry_after,
    parse_retry_after_ms,
};

const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
const STRIPE_SHOULD_RETRY: HeaderName = HeaderName::from_static("stripe-should-retry");

/// How a header registered with [`DefaultClassifier::delay_header`] states
/// its delay.
///
/// ```
/// use http::HeaderName;
/// use tower_reissue::DefaultClassifier;
/// use tower_reissue::classify::DelayUnit;
///
/// let c = DefaultClassifier::new()
///     .delay_header(HeaderName::from_static("x-ratelimit-reset-after"), DelayUnit::Seconds);
/// # let _ = c;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayUnit {
    /// Whole seconds or an HTTP-date, like `Retry-After`.
    Seconds,
    /// Milliseconds, fractions allowed, like `retry-after-ms`.
    Milliseconds,
}

type ErrorRule = Arc<dyn Fn(&(dyn StdError + 'static)) -> Option<Verdict> + Send + Sync>;

/// The classification table of the crate (see the [module docs](super)),
/// with every rule overridable.
///
/// ```
/// use http::StatusCode;
/// use tower_reissue::{DefaultClassifier, Processed, Verdict};
///
/// let classifier = DefaultClassifier::new()
///     // This API answers 409 while it is still busy with a previous call.
///     .retry_status(StatusCode::CONFLICT)
///     // And its 503s mean "maintenance, come back tomorrow".
///     .never_retry_status(StatusCode::SERVICE_UNAVAILABLE)
///     // 520 from a CDN in front of it never reached the origin.
///     .status_verdict(StatusCode::from_u16(520).unwrap(), Verdict::transient(Processed::No))
///     // And its 420 is its rate limiter's 429.
///     .throttle_status(StatusCode::from_u16(420).unwrap());
/// # let _ = classifier;
/// ```
#[derive(Clone, Default)]
pub struct DefaultClassifier {
    statuses: Vec<(StatusCode, Verdict)>,
    delay_headers: Vec<(HeaderName, DelayUnit)>,
    pushback_headers: Vec<HeaderName>,
    error_rules: Vec<ErrorRule>,
}

impl DefaultClassifier {
    /// The table as documented, with no overrides.
    ///
    /// ```
    /// use tower_reissue::DefaultClassifier;
    /// let c = DefaultClassifier::new();
    /// # let _ = c;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Treats `status` as `Transient` with processed `Maybe`: retried for
    /// requests that are safe to repeat.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_reissue::DefaultClassifier;
    /// let c = DefaultClassifier::new().retry_status(StatusCode::CONFLICT);
    /// # let _ = c;
    /// ```
    pub fn retry_status(self, status: StatusCode) -> Self {
        self.status_verdict(status, Verdict::transient(Processed::Maybe))
    }

    /// Treats `status` as throttling ([`Verdict::Throttled`]), like 429: the
    /// server turned the request away before doing any work, so it is
    /// retried whatever its method, on the throttling backoff and at the
    /// budget's throttled cost, with the response's delay if it states one.
    /// For a vendor's own rate-limit code.
    ///
    /// ```
    /// use http::{HeaderMap, Method, StatusCode, Uri};
    /// use tower_reissue::classify::{Outcome, RequestView};
    /// use tower_reissue::{Classifier, DefaultClassifier, Verdict};
    ///
    /// let c = DefaultClassifier::new().throttle_status(StatusCode::from_u16(420).unwrap());
    /// let (method, uri, headers) = (Method::POST, Uri::from_static("/"), HeaderMap::new());
    /// let request = RequestView::new(&method, &uri, &headers);
    /// let status = StatusCode::from_u16(420).unwrap();
    /// let outcome = Outcome::Response { status, headers: &headers };
    /// assert_eq!(c.classify(&request, &outcome), Verdict::throttled(None));
    /// ```
    pub fn throttle_status(self, status: StatusCode) -> Self {
        self.status_verdict(status, Verdict::throttled(None))
    }

    /// Treats `status` as `Permanent`: never retried.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_reissue::DefaultClassifier;
    /// let c = DefaultClassifier::new().never_retry_status(StatusCode::BAD_GATEWAY);
    /// # let _ = c;
    /// ```
    pub fn never_retry_status(self, status: StatusCode) -> Self {
        self.status_verdict(status, Verdict::Permanent)
    }

    /// Gives `status` the given verdict, replacing the table's rule for it.
    /// A `retry_after` in `verdict` is kept unless the response states one.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_reissue::{DefaultClassifier, Processed, Verdict};
    /// let c = DefaultClassifier::new()
    ///     .status_verdict(StatusCode::SERVICE_UNAVAILABLE, Verdict::transient(Processed::No));
    /// # let _ = c;
    /// ```
    pub fn status_verdict(mut self, status: StatusCode, verdict: Verdict) -> Self {
        self.statuses.retain(|(s, _)| *s != status);
        self.statuses.push((status, verdict));
        self
    }

    /// Also reads the server's requested delay from `header`, after
    /// `retry-after-ms` and `Retry-After`.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_reissue::DefaultClassifier;
    /// use tower_reissue::classify::DelayUnit;
    /// let c = DefaultClassifier::new()
    ///     .delay_header(HeaderName::from_static("x-backoff-ms"), DelayUnit::Milliseconds);
    /// # let _ = c;
    /// ```
    pub fn delay_header(mut self, header: HeaderName, unit: DelayUnit) -> Self {
        self.delay_headers.push((header, unit));
        self
    }

    /// Also honours `header: true|false` as a pushback header, like
    /// `x-should-retry` and `Stripe-Should-Retry`.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_reissue::DefaultClassifier;
    /// let c = DefaultClassifier::new().pushback_header(HeaderName::from_static("x-acme-retryable"));
    /// # let _ = c;
    /// ```
    pub fn pushback_header(mut self, header: HeaderName) -> Self {
        self.pushback_headers.push(header);
        self
    }

    /// Adds a rule for errors, consulted before the built-in error rules;
    /// returning `None` falls through to them.
    ///
    /// ```
    /// use tower_reissue::{DefaultClassifier, Processed, Verdict};
    ///
    /// #[derive(Debug)]
    /// struct Throttled;
    /// impl std::fmt::Display for Throttled {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("throttled") }
    /// }
    /// impl std::error::Error for Throttled {}
    ///
    /// let c = DefaultClassifier::new().error_rule(|err| {
    ///     err.is::<Throttled>().then_some(Verdict::transient(Processed::No))
    /// });
    /// # let _ = c;
    /// ```
    pub fn error_rule<F>(mut self, rule: F) -> Self
    where
        F: Fn(&(dyn StdError + 'static)) -> Option<Verdict> + Send + Sync + 'static,
    {
        self.error_rules.push(Arc::new(rule));
        self
    }

    /// The verdict for a status on its own, before any header is read.
    fn status_rule(&self, status: StatusCode, request: &RequestView<'_>) -> Verdict {
        if let Some((_, verdict)) = self.statuses.iter().find(|(s, _)| *s == status) {
            return *verdict;
        }
        match status.as_u16() {
            ..400 => Verdict::Success,
            408 => Verdict::transient(Processed::Maybe),
            // Rate limiting is decided before any work is done.
            429 => Verdict::throttled(None),
            // With a key, the server is still running the first copy: a later
            // retry is answered from its stored result.
            409 if request.has_idempotency_key() => Verdict::transient(Processed::No),
            400..500 => Verdict::Permanent,
            500 | 502 | 503 | 504 => Verdict::transient(Processed::Maybe),
            _ => Verdict::Permanent,
        }
    }

    fn pushback(&self, headers: &HeaderMap) -> Option<bool> {
        let builtin = [X_SHOULD_RETRY, STRIPE_SHOULD_RETRY];
        builtin
            .iter()
            .chain(self.pushback_headers.iter())
            .find_map(|name| {
                let value = headers.get(name)?.to_str().ok()?.trim();
                if value.eq_ignore_ascii_case("true") {
                    Some(true)
                } else if value.eq_ignore_ascii_case("false") {
                    Some(false)
                } else {
                    None
                }
            })
    }

    /// The server's requested delay: `retry-after-ms`, then `Retry-After`,
    /// then the registered headers; the first one that parses wins.
    pub(crate) fn retry_after(&self, headers: &HeaderMap) -> Option<Duration> {
        if let Some(d) = headers
            .get(RETRY_AFTER_MS)
            .and_then(|v| parse_retry_after_ms(v.as_bytes()))
        {
            return Some(d);
        }
        let now = SystemTime::now();
        if let Some(d) = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v.as_bytes(), now))
        {
            return Some(d);
        }
        self.delay_headers.iter().find_map(|(name, unit)| {
            let value = headers.get(name)?.as_bytes();
            match unit {
                DelayUnit::Seconds => parse_retry_after(value, now),
                DelayUnit::Milliseconds => parse_retry_after_ms(value),
            }
        })
    }
}

impl Classifier for DefaultClassifier {
    fn classify(&self, request: &RequestView<'_>, outcome: &Outcome<'_>) -> Verdict {
        match outcome {
            Outcome::Response { status, headers } => {
                let verdict = self.status_rule(*status, request);
                // Success is final: pushback and delays only speak to failures.
                if verdict == Verdict::Success {
                    return verdict;
                }
                // A pushback value not understood counts as no pushback:
                // see "Pushback the layer does not understand" in the
                // module docs.
                let verdict = match self.pushback(headers) {
                    Some(false) => return Verdict::Permanent,
                    // The server says a retry may work; whether it already
                    // acted on the request is still the status rule's call.
                    Some(true) if verdict.is_transient() => verdict,
                    Some(true) => Verdict::transient(Processed::Maybe),
                    None => verdict,
                };
                if !verdict.is_transient() {
                    return verdict;
                }
                let Some(delay) = self.retry_after(headers) else {
                    return verdict;
                };
                // A 503 that says when to come back is the server pacing its
                // clients (the table's rule; an override of 503 is left as
                // it is). Only a delay understood makes it so: throttling
                // allows repeating any method.
                if *status == StatusCode::SERVICE_UNAVAILABLE
                    && matches!(verdict, Verdict::Transient { .. })
                    && !self.statuses.iter().any(|(s, _)| s == status)
                {
                    return Verdict::throttled(Some(delay));
                }
                verdict.with_retry_after(Some(delay))
            }
            Outcome::Error(error) => self
                .error_rules
                .iter()
                .find_map(|rule| rule(*error))
                .unwrap_or_else(|| classify_error(*error)),
        }
    }
}

impl fmt::Debug for DefaultClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultClassifier")
            .field("statuses", &self.statuses)
            .field("delay_headers", &self.delay_headers)
            .field("pushback_headers", &self.pushback_headers)
            .field("error_rules", &self.error_rules.len())
            .finish()
    }
}
