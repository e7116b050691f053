//! The library's error type. Every variant names the file it is about; refusals and bad input carry
//! a hint saying what the user can do, because "invalid adapter" alone helps nobody, and a kind
//! ([`ErrorKind`]) a caller can match on, because the message is for people. Also here:
//! what every talk with a server shares (`printable` for server text, [`Patience`] for timeouts
//! and retries).

use std::path::{Path, PathBuf};

/// What went wrong, for a caller that reacts differently to each: retry later, ask for a token,
/// pick another base, report a bug. The message says the same to a person; this says it to code.
/// New kinds may be added, so a `match` needs a `_` arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// What was named does not exist: a file, a Hub repo, revision or file, an Ollama model or tag.
    NotFound,
    /// Access was refused: a gated or private repo, a missing or bad token or key, a push the
    /// registry refused.
    Unauthorized,
    /// The server asks to come back later (429, or `Retry-After` longer than we wait), after the
    /// retries [`Patience`] allows.
    RateLimited,
    /// The adapter does not fit the base: shapes, layers, ranks, vocabulary, architecture, or (with
    /// `--strict`) any warning, such as another model family.
    Mismatch,
    /// Well-formed, but asks for something this tool or the target does not handle (another PEFT
    /// type, DoRA as a GGUF adapter, an unsupported architecture, a pickled adapter).
    Unsupported,
    /// The input is malformed: bad JSON, truncated safetensors, inconsistent shapes inside a file.
    Invalid,
    /// Options that do not fit together, or a question only the user can answer and nobody was
    /// there to ask (pass `--force`, `--yes`, `--subfolder`).
    Usage,
    /// The user interrupted (Ctrl-C); nothing half-written was left behind.
    Interrupted,
    /// A local file could not be read or written.
    Io,
    /// A server failed, broke off, sent something unusable, or could not be reached.
    Server,
}

/// The library's error: every variant names what it is about (a file, URL, repo or model) and
/// says, in its `Display`, what went wrong and what to do; [`Error::kind`] is for matching.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or written.
    #[error("{}: {err}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The input is malformed (bad JSON, truncated safetensors, inconsistent shapes), or a server's
    /// answer is.
    #[error("{}: {msg}{}", path.display(), fmt_hint(hint))]
    Invalid {
        /// The file, URL, repo or model the error is about.
        path: PathBuf,
        /// What is wrong.
        msg: String,
        /// What the user can do.
        hint: Option<String>,
        /// What a caller can match on; [`ErrorKind::Invalid`] unless the site knows better.
        kind: ErrorKind,
    },
    /// The input is well-formed but cannot be used as asked (a feature a GGUF LoRA adapter cannot
    /// express, an adapter that does not fit the base, a server's refusal).
    #[error("{}: {msg}{}", path.display(), fmt_hint(hint))]
    Refused {
        /// The file, URL, repo or model the error is about.
        path: PathBuf,
        /// What is wrong.
        msg: String,
        /// What the user can do.
        hint: Option<String>,
        /// What a caller can match on; [`ErrorKind::Unsupported`] unless the site knows better.
        kind: ErrorKind,
    },
    /// Options that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// The user interrupted; nothing was left behind.
    #[error("interrupted; nothing half-written was left behind")]
    Cancelled,
}

fn fmt_hint(hint: &Option<String>) -> String {
    hint.as_ref().map_or_else(String::new, |h| format!("\n  hint: {h}"))
}

/// The library's `Result`, with [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A file that could not be read or written.
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            err,
        }
    }

    /// Malformed input at `path`, without a hint ([`Error::with_hint`] adds one); kind
    /// [`ErrorKind::Invalid`] ([`Error::with_kind`] changes it).
    pub fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.to_path_buf(),
            msg: msg.into(),
            hint: None,
            kind: ErrorKind::Invalid,
        }
    }

    /// A refusal about `path`, with what to do; kind [`ErrorKind::Unsupported`]
    /// ([`Error::with_kind`] changes it).
    pub fn refused(path: &Path, msg: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Refused {
            path: path.to_path_buf(),
            msg: msg.into(),
            hint: Some(hint.into()),
            kind: ErrorKind::Unsupported,
        }
    }

    /// Adds or replaces the hint of an `Invalid` or `Refused` error; other variants are returned
    /// as they are.
    pub fn with_hint(mut self, h: impl Into<String>) -> Self {
        if let Error::Invalid { hint, .. } | Error::Refused { hint, .. } = &mut self {
            *hint = Some(h.into());
        }
        self
    }

    /// Sets the kind of an `Invalid` or `Refused` error; the other variants' kinds follow from
    /// the variant, and they are returned as they are. The message does not change.
    pub fn with_kind(mut self, k: ErrorKind) -> Self {
        if let Error::Invalid { kind, .. } | Error::Refused { kind, .. } = &mut self {
            *kind = k;
        }
        self
    }

    /// What went wrong, for matching: the kind an `Invalid` or `Refused` error was given;
    /// [`ErrorKind::NotFound`] or [`ErrorKind::Io`] for `Io` (by the I/O error's own kind);
    /// [`ErrorKind::Usage`] and [`ErrorKind::Interrupted`] for `Usage` and `Cancelled`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            Error::Io { .. } => ErrorKind::Io,
            Error::Invalid { kind, .. } | Error::Refused { kind, .. } => *kind,
            Error::Usage(_) => ErrorKind::Usage,
            Error::Cancelled => ErrorKind::Interrupted,
        }
    }
}

/// Server-supplied text made safe to print: control characters (ESC, CR, BEL, C1, ... and the
/// bidirectional overrides that reorder what a terminal shows) become visible escapes such as
/// `\u{1b}`, newline and tab are kept, and at most `max_chars` characters are shown. A hostile or
/// broken server must not be able to recolour, rewrite or flood the user's terminal.
pub(crate) fn printable(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            out.push_str(&format!(
                "... ({} more bytes)",
                s.len() - s.char_indices().nth(i).map_or(s.len(), |(at, _)| at)
            ));
            break;
        }
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if (c.is_control() && c != '\n' && c != '\t') || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// What a JSON answer that could not be read is, in words: empty, cut short, not JSON at all, or
/// JSON of another shape (serde's own text, which then names the field).
pub(crate) fn json_problem(e: &serde_json::Error, body: &[u8]) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof if body.iter().all(u8::is_ascii_whitespace) => "the answer was empty".into(),
        Category::Eof => format!("the answer ends in the middle of its JSON after {} bytes", body.len()),
        Category::Syntax => format!(
            "the answer is not JSON ({e}); it starts with: {}",
            printable(&String::from_utf8_lossy(&body[..body.len().min(120)]), 120)
        ),
        Category::Data | Category::Io => format!("the answer's JSON has another shape ({e})"),
    }
}

/// How long to wait for servers and how to retry them, shared by the Hub, the Ollama registry and
/// uploads to Ollama. From the environment: `OLLAMA_TOOLS_TIMEOUT` (seconds without a byte from a
/// server before giving up, default 120), `OLLAMA_TOOLS_RETRIES` (how often a broken transfer or
/// an answer such as 429 or 503 is retried, default 4) and `OLLAMA_TOOLS_RETRY_MAX_WAIT` (the
/// longest single wait in seconds, default 30: a server asking for longer with `Retry-After` is not
/// waited for, the error says when to try again). Waits double from one second, with jitter, so
/// the total wait is at most `retries * max_wait`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Patience {
    /// How long a server may send nothing before it is given up on (`OLLAMA_TOOLS_TIMEOUT`).
    pub idle: std::time::Duration,
    /// How often a broken transfer or a "later" answer is retried (`OLLAMA_TOOLS_RETRIES`).
    pub retries: u32,
    /// The longest single wait between tries (`OLLAMA_TOOLS_RETRY_MAX_WAIT`).
    pub max_wait: std::time::Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            idle: std::time::Duration::from_secs(120),
            retries: 4,
            max_wait: std::time::Duration::from_secs(30),
        }
    }
}

impl Patience {
    /// The patience this process's environment asks for (see [`Patience`]).
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Unset, empty or unreadable values keep their defaults.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let secs = |k: &str| {
            var(k)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .map(std::time::Duration::from_secs_f64)
        };
        let d = Patience::default();
        Patience {
            idle: secs("OLLAMA_TOOLS_TIMEOUT").unwrap_or(d.idle),
            retries: var("OLLAMA_TOOLS_RETRIES")
                .and_then(|v| v.trim().parse().ok())
                .map_or(d.retries, |n: u32| n.min(20)),
            max_wait: secs("OLLAMA_TOOLS_RETRY_MAX_WAIT").unwrap_or(d.max_wait),
        }
    }

    /// The wait before retry number `n` (0 for the first), honouring the server's `Retry-After`;
    /// `None` when no retry is left or the server asks for longer than `max_wait`.
    pub(crate) fn delay(&self, n: u32, retry_after: Option<std::time::Duration>) -> Option<std::time::Duration> {
        if n >= self.retries || retry_after.is_some_and(|r| r > self.max_wait) {
            return None;
        }
        if let Some(r) = retry_after {
            return Some(r);
        }
        let backoff = std::time::Duration::from_secs(1)
            .saturating_mul(1 << n.min(16))
            .min(self.max_wait);
        // Jitter in [1/2, 1] of the backoff, so clients that failed together do not retry together.
        Some(backoff.mul_f64(0.5 + 0.5 * jitter(n)))
    }

    /// Sleeps `d` in short steps, stopping early with [`Error::Cancelled`] when `cancelled` says so.
    pub(crate) fn sleep(&self, d: std::time::Duration, cancelled: impl Fn() -> bool) -> Result<()> {
        let end = std::time::Instant::now() + d;
        while let Some(left) = end
            .checked_duration_since(std::time::Instant::now())
            .filter(|l| !l.is_zero())
        {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(50)));
        }
        Ok(())
    }
}

/// A number in [0, 1) that differs between processes and calls: std's randomly seeded hasher over
/// the clock (no random-number crate is needed for this).
fn jitter(salt: u32) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(salt);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37
/// GMT`) taken relative to `now`; a date in the past means at once. `None` when unreadable.
pub(crate) fn retry_after(value: &str, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = http_date(value)?;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(std::time::Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the epoch of an IMF-fixdate (RFC 9110 section 5.6.7).
fn http_date(s: &str) -> Option<u64> {
    let (_, rest) = s.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<u64> = time.split(':').map(str::parse).collect::<Result<_, _>>().ok()?;
    let [h, m, sec] = hms[..] else { return None };
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(days).ok().map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn kinds_follow_the_variant_or_what_the_site_set_and_never_change_the_message() {
        let p = Path::new("x");
        assert_eq!(Error::invalid(p, "m").kind(), ErrorKind::Invalid);
        assert_eq!(Error::refused(p, "m", "h").kind(), ErrorKind::Unsupported);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(Error::io(p, missing).kind(), ErrorKind::NotFound);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(Error::io(p, denied).kind(), ErrorKind::Io);
        assert_eq!(Error::Usage("u".into()).kind(), ErrorKind::Usage);
        assert_eq!(Error::Cancelled.kind(), ErrorKind::Interrupted);

        let plain = Error::refused(p, "m", "h").to_string();
        let limited = Error::refused(p, "m", "h").with_kind(ErrorKind::RateLimited);
        assert_eq!(limited.to_string(), plain);
        // A hint added later keeps the kind, and a kind set later keeps the hint.
        let e = limited.with_hint("h2");
        assert_eq!(
            (e.kind(), e.to_string()),
            (ErrorKind::RateLimited, "x: m\n  hint: h2".to_string())
        );
        let e = Error::invalid(p, "m").with_hint("h").with_kind(ErrorKind::NotFound);
        assert_eq!(
            (e.kind(), e.to_string()),
            (ErrorKind::NotFound, "x: m\n  hint: h".to_string())
        );
        // Variants whose kind is their own are left as they are.
        assert_eq!(
            Error::Cancelled.with_kind(ErrorKind::Server).kind(),
            ErrorKind::Interrupted
        );
        assert_eq!(
            serde_json::to_string(&ErrorKind::RateLimited).unwrap(),
            "\"rate_limited\""
        );
    }

    #[test]
    fn printable_defuses_terminal_escapes_and_truncates() {
        assert_eq!(printable("ok\tfine\nnext", 100), "ok\tfine\nnext");
        assert_eq!(
            printable("\x1b[2J\x1b]0;pwned\x07red\r", 100),
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}red\\u{d}"
        );
        assert_eq!(printable("a\u{9b}b\u{202e}c", 100), "a\\u{9b}b\\u{202e}c");
        assert_eq!(
            printable(&"x".repeat(1000), 10),
            format!("{}... (990 more bytes)", "x".repeat(10))
        );
        assert_eq!(printable("ééé", 2), "éé... (2 more bytes)");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Tue, 29 Feb 2028 00:00:00 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(1_835_395_200))
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-3", now), None);
        assert!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT", SystemTime::now()).is_some());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_bounded() {
        let p = Patience {
            idle: Duration::from_secs(1),
            retries: 3,
            max_wait: Duration::from_secs(3),
        };
        for n in 0..3 {
            let d = p.delay(n, None).unwrap();
            let full = Duration::from_secs(1 << n).min(p.max_wait);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
        assert_eq!(p.delay(3, None), None, "no fourth retry");
        assert_eq!(p.delay(0, Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(7))),
            None,
            "longer than max_wait: not waited for"
        );
        let env = Patience::from_vars(|k| match k {
            "OLLAMA_TOOLS_TIMEOUT" => Some("0.5".into()),
            "OLLAMA_TOOLS_RETRIES" => Some("1".into()),
            "OLLAMA_TOOLS_RETRY_MAX_WAIT" => Some("nonsense".into()),
            _ => None,
        });
        assert_eq!(
            env,
            Patience {
                idle: Duration::from_millis(500),
                retries: 1,
                max_wait: Duration::from_secs(30)
            }
        );
    }
}
